"""The events one ``WatchJob`` stream waits for, bounded however slowly its watcher reads.

A job publishes a progress event per training step and a row per state change. A watcher that
reads slower than steps happen must not hold a growing backlog: a new progress event replaces the
one still waiting (only the latest counts), and rows, a handful per job, are kept in order up to
``MAX_PENDING_ROWS`` (past it the oldest goes; the newest, terminal one always stays).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from textinv_client.types import JobProgress
from textinv_server.store import JobRow

MAX_PENDING_ROWS = 16

JobEvent: TypeAlias = JobRow | JobProgress


class JobEvents:
    """A bounded, latest-progress-wins event queue owned by one event loop.

    ``put`` runs on that loop (producers on other threads go through ``publish_threadsafe``);
    ``get`` waits there.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: deque[JobEvent] = deque()
        self._ready = asyncio.Event()

    def publish_threadsafe(self, event: JobEvent) -> None:
        self.loop.call_soon_threadsafe(self.put, event)

    def put(self, event: JobEvent) -> None:
        if isinstance(event, JobProgress):
            self._drop(lambda e: isinstance(e, JobProgress), keep=0)
        else:
            self._drop(lambda e: isinstance(e, JobRow), keep=MAX_PENDING_ROWS - 1)
        self._pending.append(event)
        self._ready.set()

    async def get(self) -> JobEvent:
        while not self._pending:
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()

    def qsize(self) -> int:
        return len(self._pending)

    def _drop(self, matches: Callable[[JobEvent], bool], keep: int) -> None:
        """Drop the oldest pending events that ``matches`` until at most ``keep`` remain."""
        chosen = [e for e in self._pending if matches(e)]
        for event in chosen[: max(0, len(chosen) - keep)]:
            self._pending.remove(event)
