"""A real textinv server on a free port, with the tiny model, for the integration tests.

The server runs in this process on its own event loop thread (``textinv_server.background``, the
same start-up code ``textinv serve`` runs); tests talk to it through the real client over TCP.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.replicas import Process
from textinv_server.background import BackgroundServer
from textinv_server.config import BatchingConfig, Limits, ServerConfig

ServerThread = BackgroundServer


def server_config(model_dir: Path, data_dir: Path, **changes: Any) -> ServerConfig:
    base = ServerConfig(
        model=str(model_dir),
        data_dir=data_dir,
        port=0,
        limits=Limits(max_concurrent_jobs=1),
        batching=BatchingConfig(max_batch=4, batch_wait_ms=20, max_queue=32),
        grace_seconds=1.0,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def start_textinv(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start servers (with config changes); every one is stopped at the end of the test."""
    started: list[ServerThread] = []

    def start(**changes: Any) -> ServerThread:
        changes.setdefault("data_dir", tmp_path / "data")
        server = ServerThread(server_config(tiny_model_dir, **changes))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[[Process], Any]]:
    """Processes (``tests.integration.replicas``) started in a test; each killed at its end."""
    started: list[Process] = []

    def keep(process: Process) -> Any:
        started.append(process)
        return process

    yield keep
    for process in started:
        process.kill()


@pytest.fixture
def textinv_server(start_textinv: Callable[..., ServerThread]) -> ServerThread:
    return start_textinv()
