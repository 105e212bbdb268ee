"""A concept file damaged on disk while the server is stopped is reported at the next start, and
left out of ListConcepts and Generate; its neighbours are untouched."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_server_rpcs import concept_file, small
from textinv_client import NotFound, TextInvClient
from textinv_server.background import BackgroundServer


def test_a_concept_damaged_while_stopped_is_reported_and_left_out(
    start_textinv: Callable[..., BackgroundServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    # 1. Two concepts registered; the server stops cleanly.
    first = start_textinv(data_dir=data)
    with TextInvClient(first.target) as textinv:
        damaged = textinv.register_concept(concept_file("<damaged>", seed=1), filename="d.pt")
        textinv.register_concept(concept_file("<intact>", seed=2), filename="i.pt")
    first.stop()
    # 2. While it is stopped, one file's bytes change (same length: only the sha256 can tell).
    (path,) = (data / "concepts").glob(f"{damaged.sha256}*")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    # 3. The next start reports it, by token, and serves only the intact one.
    with caplog.at_level(logging.WARNING, logger="textinv_server.registry"):
        second = start_textinv(data_dir=data)
    assert any("<damaged>" in record.getMessage() for record in caplog.records)
    with TextInvClient(second.target) as textinv:
        assert [concept.token for concept in textinv.list_concepts()] == ["<intact>"]
        with pytest.raises(NotFound, match="<damaged>"):
            textinv.generate(small("a photo of <damaged>"))
        assert textinv.generate(small("a photo of <intact>")).images
