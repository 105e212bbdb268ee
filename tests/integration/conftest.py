"""A real textinv server on a free port, with the tiny model, for the integration tests.

The server runs in this process on its own event loop thread (``server.app.start_server``, the
same code ``textinv serve`` runs); tests talk to it through the real client over TCP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from server.app import RunningServer, start_server
from server.config import BatchingConfig, Limits, ServerConfig


class ServerThread:
    """``start_server`` on a private event loop; ``stop`` shuts it down gracefully."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = self.call(start_server(config), timeout=120)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def call(self, coroutine: Any, timeout: float = 60) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def stop(self, grace_s: float = 1.0) -> None:
        if not self.thread.is_alive():
            return  # stopped already
        self.call(self.running.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


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
def textinv_server(start_textinv: Callable[..., ServerThread]) -> ServerThread:
    return start_textinv()
