"""A server on a private event-loop thread: for the demo, benchmarks and tests in one process.

It runs ``textinv_server.app.start_server``, the same code as ``textinv serve``; callers talk to
it over TCP through the real client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from textinv_server.app import RunningServer, start_server
from textinv_server.config import ServerConfig

T = TypeVar("T")


class BackgroundServer:
    """``start_server(config)`` on its own loop thread; ``stop`` shuts it down gracefully."""

    def __init__(self, config: ServerConfig, start_timeout_s: float = 300) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        try:
            self.running: RunningServer = self.call(start_server(config), start_timeout_s)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    @property
    def target(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"{host}:{self.running.port}"

    def call(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout_s)

    def stop(self, grace_s: float = 1.0) -> None:
        if not self.thread.is_alive():
            return  # stopped already
        self.call(self.running.stop(grace_s))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
