"""Watching jobs through the store, so that any replica can watch a job any worker trains.

Every change to a job row is announced by the store (``StoreEvent`` of kind ``job``), from
whichever process made it. ``JobWatchers`` keeps the ``WatchJob`` streams of this replica; for a
watched job it reads the row again, on its own thread (store listeners must return quickly), and
publishes the row and its latest progress to each stream. One path for every watcher: a job
trained in this very process reaches its watchers the same way.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

from textinv_client.types import JobProgress
from textinv_server.job_events import JobEvents
from textinv_server.store import JobRow, StoreEvent

log = logging.getLogger(__name__)


class JobWatchers:
    def __init__(self, read_row: Callable[[str], JobRow | None]) -> None:
        self._read_row = read_row
        self._lock = threading.Lock()
        self._watchers: dict[str, list[JobEvents]] = {}
        self._last_progress: dict[str, JobProgress] = {}
        self._changed: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._dispatch, name="job-watchers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._changed.put(None)

    def subscribe(self, job_id: str) -> JobEvents:
        """Events of ``job_id`` (JobProgress and JobRow) as they happen, on the caller's loop."""
        events = JobEvents(asyncio.get_running_loop())
        with self._lock:
            self._watchers.setdefault(job_id, []).append(events)
        return events

    def unsubscribe(self, job_id: str, events: JobEvents) -> None:
        with self._lock:
            remaining = [w for w in self._watchers.get(job_id, []) if w is not events]
            if remaining:
                self._watchers[job_id] = remaining
            else:
                self._watchers.pop(job_id, None)
                self._last_progress.pop(job_id, None)

    def on_store_event(self, event: StoreEvent) -> None:
        """A store listener: queue the job for a re-read when someone here watches it."""
        if event.kind == "job":
            with self._lock:
                watched = event.job_id in self._watchers
            if watched:
                self._changed.put(event.job_id)
        elif event.kind == "reset":  # changes may have been missed: read every watched job
            with self._lock:
                for job_id in self._watchers:
                    self._changed.put(job_id)

    def _dispatch(self) -> None:
        while (job_id := self._changed.get()) is not None:
            try:
                row = self._read_row(job_id)
            except Exception:  # the store is unreachable for a moment: the next change retries
                log.warning("job %s: could not read its row for watchers", job_id, exc_info=True)
                continue
            if row is not None:
                self._publish(row)

    def _publish(self, row: JobRow) -> None:
        progress = _progress_of(row)
        with self._lock:
            watchers = list(self._watchers.get(row.job_id, []))
            fresh = progress is not None and self._last_progress.get(row.job_id) != progress
            if fresh and progress is not None:
                self._last_progress[row.job_id] = progress
        for events in watchers:
            if fresh and progress is not None:
                events.publish_threadsafe(progress)
            events.publish_threadsafe(row)


def _progress_of(row: JobRow) -> JobProgress | None:
    """The row's latest training step as the wire's ``JobProgress``; None before the first."""
    if not row.progress:
        return None
    try:
        return JobProgress(**row.progress)
    except TypeError:  # a row written by another version: its step and loss still say enough
        return JobProgress(row.step, row.total_steps, row.loss or 0.0, 0.0, 0.0, 0.0)
