"""The learning curve's snapshots: taken at the asked steps, on the training clock, and where DVAR
stops a run early; the last one is the vectors the run saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.test_trainer import config_for, make_images
from textinv.cli.bench.learning_curve import read_steps, train_with_snapshots
from textinv.concepts import load_concept
from textinv.trainer import CONCEPT_FILE


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


def test_snapshots_are_the_vectors_at_each_asked_step(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, steps=6, lr=0.05)
    seen: list[int] = []
    snapshots = train_with_snapshots(
        config, tiny_model, {2, 4, 6}, lambda e: seen.append(e.step) if e.event == "step" else None
    )
    assert [s.step for s in snapshots] == [2, 4, 6] and seen == [1, 2, 3, 4, 5, 6]
    assert 0 < snapshots[0].seconds < snapshots[1].seconds < snapshots[2].seconds
    # Each is a copy taken then, not a view of vectors that went on training.
    assert not torch.equal(snapshots[0].vectors, snapshots[2].vectors)
    saved = load_concept(Path(config.out) / CONCEPT_FILE).vectors
    torch.testing.assert_close(snapshots[-1].vectors, saved.float(), rtol=0, atol=1e-3)


def test_a_run_dvar_stops_early_is_snapshotted_where_it_stopped(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    config = config_for(
        image_dir, tmp_path / "out", tiny_model_dir, steps=200, lr=1e-12, eval_every=1,
        early_stop=3,
    )  # fmt: skip
    snapshots = train_with_snapshots(config, tiny_model, read_steps(200, first=2))
    assert snapshots[-1].step < 200  # the plateau ended it
    assert [s.step for s in snapshots[:-1]] == [2, 4, 8, 16, 32, 64, 128][: len(snapshots) - 1]


def test_read_steps_double_up_to_the_last() -> None:
    assert read_steps(800, first=100) == {100, 200, 400, 800}
    assert read_steps(30, first=15) == {15, 30}
    assert read_steps(10, first=15) == {10}
