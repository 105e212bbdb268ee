"""Inversion jobs: learn a concept on the server, durably, while generation keeps serving.

Scheduling policy. Jobs run on their own worker threads, at most ``max_concurrent_jobs`` at
once; at most ``max_queued`` wait and at most ``max_stored`` keep files on disk (past either,
creation is refused with RESOURCE_EXHAUSTED). Each worker thread lowers its own scheduling
priority (nice +10 on Linux) and runs torch with one intra-op thread, so the generation thread,
at normal priority, wins the CPU whenever it has work.

Durability. A job's images and trainer output live in ``DATA/jobs/<job id>/`` (the id is made
here, never taken from a request), within ``max_job_bytes``; ``retention_s`` after it finished,
all but its learned concept is deleted and its row marked. The trainer checkpoints every
``checkpoint_every`` steps; when the server stops, running jobs are asked to stop, which
checkpoints them, and they resume at the next start, also after a ``kill -9``. Each run that
starts counts an attempt, given back when it stops in order: a job that kept killing the server
fails after ``max_attempts``. A cancel is written to the database at once and stops a running job
within one micro-batch; after a restart a cancelled job stays cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textinv.concepts import check_token
from textinv.errors import (
    InvalidInputError,
    NotFoundError,
    TextInvError,
)
from textinv.trainer import CHECKPOINT_DIR, CONCEPT_FILE
from textinv_client.choices import JobState
from textinv_client.types import JobProgress  # one training step; the wire's own shape
from textinv_server import metrics
from textinv_server.job_events import JobEvent, JobEvents
from textinv_server.job_files import (
    IMAGES_DIR,
    OUT_DIR,
    check_job_bytes,
    purge_job_files,
    remove_orphan_folders,
)
from textinv_server.job_tokens import check_token_is_free, register_learned
from textinv_server.job_trainer import TrainFn, lower_priority, textinv_trainer
from textinv_server.job_uploads import UploadedImage, check_uploads, save_images
from textinv_server.registry import ConceptRegistry
from textinv_server.store import JobRow, Store, disk_full_error, is_disk_full

__all__ = ["JobManager", "JobProgress", "TrainFn", "UploadedImage", "textinv_trainer"]

log = logging.getLogger(__name__)
# Defaults of the limits that ``Limits`` does not name yet.
DEFAULT_MAX_STORED_JOBS = 256
DEFAULT_JOB_RETENTION_S = 7 * 24 * 3600.0
DEFAULT_MAX_JOB_BYTES = 128 << 20
DEFAULT_MAX_JOB_ATTEMPTS = 3
SWEEP_INTERVAL_S = 3600.0  # how often expired jobs are looked for, besides at start


class JobManager:
    def __init__(
        self,
        store: Store,
        registry: ConceptRegistry,
        folder: Path,
        train: TrainFn,
        *,
        vocabulary: set[str] | Any,
        max_concurrent: int,
        max_queued: int,
        max_images: int,
        max_steps: int,
        max_stored: int = DEFAULT_MAX_STORED_JOBS,
        retention_s: float = DEFAULT_JOB_RETENTION_S,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        max_attempts: int = DEFAULT_MAX_JOB_ATTEMPTS,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.store, self.registry, self.folder, self._train = store, registry, folder, train
        self.vocabulary = vocabulary
        self.max_images, self.max_steps, self.max_queued = max_images, max_steps, max_queued
        self.max_stored, self.retention_s = max_stored, retention_s
        self.max_job_bytes, self.max_attempts = max_job_bytes, max_attempts
        self._sweep_interval_s = sweep_interval_s
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._shutdown = threading.Event()
        self._lock = threading.Lock()  # the watchers
        self._state_lock = threading.RLock()  # a job's start against its cancel
        self._watchers: dict[str, list[JobEvents]] = {}
        self._running: set[str] = set()  # jobs a worker trains now
        self._released: set[str] = set()  # stopped on request: the attempt was no crash
        self._workers = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            for i in range(max_concurrent)
        ]
        self._sweeper = threading.Thread(target=self._sweep, name="job-sweeper", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Clean up what a crash left, then queue again every job a previous run left unfinished
        (unless it was cancelled or ran out of attempts), then start the workers."""
        # 1. Job folders without a row; jobs past their retention period.
        remove_orphan_folders(self.folder, self.store.job_ids())
        self.purge_expired()
        # 2. Unfinished jobs, oldest first.
        for row in reversed(self.store.list_jobs((JobState.QUEUED, JobState.RUNNING))):
            if self._settle_unrunnable(row) is None:
                log.info("job %s was %s when the server stopped; queued", row.job_id, row.state)
                self._queue.put(row.job_id)
        # 3. The threads.
        for worker in self._workers:
            worker.start()
        self._sweeper.start()
        self._update_gauges()

    def stop(self, timeout_s: float) -> None:
        """Ask running jobs to checkpoint and stop; they resume at the next start. A job still in
        a micro-step when ``timeout_s`` ends was stopped on request too: its attempt is no crash."""
        self._shutdown.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            if worker.ident is not None:  # started
                worker.join(timeout_s)
        with self._state_lock:
            still_running = list(self._running)
        for job_id in still_running:
            self._release(job_id)

    # --- requests ---------------------------------------------------------------------------

    def create(
        self, images: Sequence[UploadedImage], params: dict[str, Any], skip_register: bool
    ) -> JobRow:
        # 1. Everything that can be refused before a byte is written.
        self._check_request(images, params)
        self.store.add_job_allowed(max_queued=self.max_queued, max_stored=self.max_stored)
        # 2. The uploads, then the row (a crash between leaves a folder that start removes).
        job_id = uuid.uuid4().hex
        row = JobRow(
            job_id=job_id,
            state=JobState.QUEUED,
            params=params,
            num_images=len(images),
            skip_register=skip_register,
            total_steps=int(params["steps"]),
            created_at=time.time(),
        )
        try:
            save_images(self._job_folder(job_id) / IMAGES_DIR, images)
            self.store.add_job(row, max_queued=self.max_queued, max_stored=self.max_stored)
        except BaseException:
            shutil.rmtree(self._job_folder(job_id), ignore_errors=True)
            raise
        self._queue.put(job_id)
        self._update_gauges()
        return row

    def get(self, job_id: str) -> JobRow:
        row = self.store.get_job(job_id)
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist")
        return row

    def list(self, states: Sequence[JobState] = ()) -> list[JobRow]:
        return self.store.list_jobs(tuple(states))

    def cancel(self, job_id: str) -> JobRow:
        """Record the cancel at once (it survives a ``kill -9``); a queued job ends here, a
        running one within one micro-batch."""
        row = self.get(job_id)
        if row.state.is_terminal:
            return row
        with self._state_lock:
            self._cancel_event(job_id).set()
            row = self._update(job_id, cancel_requested=True)
            if row.state is JobState.QUEUED:  # not started: cancel right here
                row = self._finish(job_id, JobState.CANCELLED)
        return row

    def concept_file(self, job_id: str) -> bytes:
        row = self.get(job_id)
        if not row.concept_ready:
            raise InvalidInputError(
                f"job {job_id!r} is {row.state}; its file exists once it succeeds"
            )
        path = self._job_folder(job_id) / OUT_DIR / CONCEPT_FILE
        if not path.is_file():
            raise NotFoundError(f"the concept file of job {job_id!r} is gone")
        return path.read_bytes()

    def subscribe(self, job_id: str) -> JobEvents:
        """Events of ``job_id`` (JobProgress and JobRow) as they happen, on the caller's loop;
        bounded: a slow reader gets the latest progress, not every step. No store access here
        (it runs on the event loop): the caller looks the job up, off the loop."""
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

    def purge_expired(self) -> tuple[str, ...]:
        """Delete the files (not the concept, not the row) of jobs past their retention."""
        purged: tuple[str, ...] = ()
        for row in self.store.finished_before(time.time() - self.retention_s):
            purge_job_files(self._job_folder(row.job_id))
            self.store.update_job(row.job_id, purged_at=time.time())
            purged += (row.job_id,)
        if purged:
            log.info("deleted the files of %d jobs past their retention period", len(purged))
        return purged

    # --- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        lower_priority()
        torch.set_num_threads(1)
        while not self._shutdown.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # e.g. the disk filled while a row was written: keep working
                log.exception("job %s: the worker survived an error", job_id)
            self._update_gauges()

    def _sweep(self) -> None:
        while not self._shutdown.wait(self._sweep_interval_s):
            try:
                self.purge_expired()
            except Exception:
                log.exception("purging expired jobs failed; retried at the next sweep")

    def _run(self, job_id: str) -> None:
        row = self._begin(job_id)
        if row is None:
            return
        cancel = self._cancel_event(job_id)
        folder = self._job_folder(job_id)
        with self._state_lock:
            self._running.add(job_id)
        try:
            concept = self._train(
                params=row.params,
                images=folder / IMAGES_DIR,
                out=folder / OUT_DIR,
                resume=True,
                progress=lambda p: self._on_progress(job_id, p),
                on_files=lambda: check_job_bytes(folder, self.max_job_bytes),
                should_stop=lambda: cancel.is_set() or self._shutdown.is_set(),
            )
        except Exception as error:
            self._fail(job_id, error)
            return
        finally:
            with self._state_lock:
                self._running.discard(job_id)
        if cancel.is_set() or self.get(job_id).cancel_requested:
            self._finish(job_id, JobState.CANCELLED)
        elif self._shutdown.is_set() and concept.metadata.steps != row.total_steps:
            self._release(job_id)
            log.info("job %s checkpointed at shutdown; it resumes at the next start", job_id)
        else:
            self._succeed(job_id, concept)

    def _release(self, job_id: str) -> None:
        """Take back the attempt that ``_begin`` counted, once: the run stopped on request."""
        with self._state_lock:
            if job_id in self._released:
                return
            self._released.add(job_id)
            self._update(job_id, attempts=max(0, self.get(job_id).attempts - 1))

    def _begin(self, job_id: str) -> JobRow | None:
        """Mark the job RUNNING and count the attempt; ``None`` when it must not run."""
        with self._state_lock:
            row = self.get(job_id)
            if row.state not in (JobState.QUEUED, JobState.RUNNING):
                return None  # cancelled while it waited
            if self._settle_unrunnable(row) is not None:
                return None
            return self._update(
                job_id,
                state=JobState.RUNNING,
                started_at=row.started_at or time.time(),
                attempts=row.attempts + 1,
            )

    def _settle_unrunnable(self, row: JobRow) -> JobRow | None:
        """End a job that was cancelled, or that ran out of attempts; ``None`` if it may run."""
        if row.cancel_requested:
            return self._finish(row.job_id, JobState.CANCELLED)
        if row.attempts >= self.max_attempts:
            log.error("job %s stopped the server %d times; not retried", row.job_id, row.attempts)
            error = (
                f"the job was interrupted {row.attempts} times by a server crash or kill while "
                "it trained, and is not retried"
            )
            return self._finish(row.job_id, JobState.FAILED, error=error)
        return None

    def _on_progress(self, job_id: str, progress: JobProgress) -> None:
        self.store.update_job(job_id, step=progress.step, loss=progress.loss)
        self._publish(job_id, progress)

    def _succeed(self, job_id: str, concept: Any) -> None:
        row = self._update(job_id, concept_ready=True)
        if row.skip_register:
            self._finish(job_id, JobState.SUCCEEDED, step=row.total_steps)
            return
        try:
            token = register_learned(self.registry, concept, row.job_id)
        except TextInvError as error:
            message = f"training finished, but its concept was not registered: {error}"
            self._finish(job_id, JobState.FAILED, step=row.total_steps, error=message)
            return
        self._finish(job_id, JobState.SUCCEEDED, step=row.total_steps, registered_token=token)

    def _fail(self, job_id: str, error: Exception) -> None:
        if is_disk_full(error):
            message = str(disk_full_error())
        elif isinstance(error, TextInvError):
            message = str(error)
        else:
            log.exception("job %s failed", job_id, exc_info=error)
            message = f"internal error while training ({type(error).__name__})"
        self._finish(job_id, JobState.FAILED, error=message)

    def _finish(self, job_id: str, state: JobState, **changes: Any) -> JobRow:
        row = self._update(job_id, state=state, finished_at=time.time(), **changes)
        shutil.rmtree(self._job_folder(job_id) / OUT_DIR / CHECKPOINT_DIR, ignore_errors=True)
        self._cancel.pop(job_id, None)
        return row

    def _update(self, job_id: str, **changes: Any) -> JobRow:
        """Change some columns of the job; watchers see state changes."""
        row = self.store.update_job(job_id, **changes)
        if row is None:
            raise NotFoundError(f"job {job_id!r} does not exist")
        if "state" in changes:
            self._publish(job_id, row)
            self._update_gauges()
        return row

    # --- helpers ----------------------------------------------------------------------------

    def _check_request(self, images: Sequence[UploadedImage], params: dict[str, Any]) -> None:
        # Every other parameter was checked at the edge (convert.create_job_from_pb).
        check_uploads(images, max_images=self.max_images, max_bytes=self.max_job_bytes)
        token = check_token(params["token"], self.vocabulary, int(params.get("vectors", 1)))
        check_token_is_free(token, self.registry, self.store)

    def _job_folder(self, job_id: str) -> Path:
        return self.folder / job_id

    def _cancel_event(self, job_id: str) -> threading.Event:
        with self._state_lock:
            return self._cancel.setdefault(job_id, threading.Event())

    def _publish(self, job_id: str, event: JobEvent) -> None:
        with self._lock:
            watchers = list(self._watchers.get(job_id, []))
        for events in watchers:
            events.publish_threadsafe(event)

    def _update_gauges(self) -> None:
        for state, count in self.store.count_jobs().items():
            metrics.JOBS.labels(state=state.value).set(count)
