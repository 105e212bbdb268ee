"""Inversion jobs: learn a concept durably, on any worker that shares the store.

Requests. ``create`` checks the uploads and the token, stores the images and the row; it is
idempotent per tenant and request id (a retried create returns the first call's job). ``get``,
``list``, ``cancel`` and ``watch`` read and write the store only, so they work through any
replica, for whichever worker trains the job. A tenant sees only its own jobs: another tenant's
job id is ``NOT_FOUND``.

Workers. ``max_concurrent`` worker threads (0 on a serving replica started with
``--no-workers``) claim jobs from the store (``Store.claim_job``): the oldest queued job, or a
running one whose worker stopped renewing its lease (it died: ``kill -9``, a lost node). The
worker trains in a local checkout of the job's files and saves each checkpoint to the store
(``JobFiles.sync``), so the next worker resumes from it with the trainer's exact-resume
guarantee. The lease is renewed every ``lease_s / 3``; a worker that finds its lease lost stops
without writing. Each worker thread lowers its own priority (nice +10) and runs torch with one
intra-op thread, so generation, at normal priority, wins the CPU whenever it has work.

Limits. At most ``max_queued`` jobs wait and ``max_stored`` keep files (past either, creation is
RESOURCE_EXHAUSTED); ``retention_s`` after a job finished, all but its learned concept is
deleted. Each claim counts an attempt, given back when the run stops in order (shutdown): a job
that kept killing its workers fails after ``max_attempts``. A cancel is written to the store at
once and stops a running job within one micro-batch, on whichever worker runs it; a cancelled job
stays cancelled.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from textinv.concepts import check_token
from textinv.errors import InvalidInputError, NotFoundError
from textinv_client.choices import JobState
from textinv_client.types import JobProgress  # one training step; the wire's own shape
from textinv_server import metrics
from textinv_server.job_events import JobEvents
from textinv_server.job_runs import JobRuns
from textinv_server.job_tokens import check_token_is_free
from textinv_server.job_trainer import TrainFn, textinv_trainer
from textinv_server.job_uploads import UploadedImage, check_uploads
from textinv_server.job_watch import JobWatchers
from textinv_server.registry import ConceptRegistry
from textinv_server.store import DEFAULT_LEASE_S, DEFAULT_TENANT, JobRow, Store, replica_id

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
        lease_s: float = DEFAULT_LEASE_S,
        worker_id: str | None = None,
    ) -> None:
        self.store, self.registry = store, registry
        self.vocabulary = vocabulary
        self.max_images, self.max_steps, self.max_queued = max_images, max_steps, max_queued
        self.max_stored, self.retention_s = max_stored, retention_s
        self.max_job_bytes = max_job_bytes
        self._sweep_interval_s = sweep_interval_s
        self._shutdown = threading.Event()
        self.watchers = JobWatchers(store.get_job)
        self.runs = JobRuns(
            store,
            registry,
            train,
            workers=max_concurrent,
            worker_id=worker_id or replica_id(),
            lease_s=lease_s,
            max_attempts=max_attempts,
            max_job_bytes=max_job_bytes,
            on_change=self._update_gauges,
        )
        self._sweeper = threading.Thread(target=self._sweep, name="job-sweeper", daemon=True)
        store.subscribe(self.watchers.on_store_event)
        store.subscribe(self.runs.on_store_event)

    @property
    def max_attempts(self) -> int:
        return self.runs.max_attempts

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Clean up what a crash left, then start the watchers, the workers and the sweeper:
        jobs that a previous run left unfinished are claimed again like any other."""
        self.store.files.remove_orphans(self.store.job_ids())
        self.purge_expired()
        self.watchers.start()
        self.runs.start()
        self._sweeper.start()
        self._update_gauges()

    def stop(self, timeout_s: float) -> None:
        """Ask running jobs to checkpoint and stop; their leases are given back, so that the next
        worker (here after a restart, or another one now) resumes them."""
        self._shutdown.set()
        self.runs.stop(timeout_s)
        self.watchers.stop()

    # --- requests ---------------------------------------------------------------------------

    def create(
        self,
        images: Sequence[UploadedImage],
        params: dict[str, Any],
        skip_register: bool,
        *,
        tenant: str = DEFAULT_TENANT,
        request_id: str = "",
    ) -> JobRow:
        # 1. A retry of an earlier create gets its job, before anything is checked or written.
        earlier = self.store.find_job_by_request(tenant, request_id) if request_id else None
        if earlier is not None:
            return earlier
        # 2. Everything that can be refused before a byte is written.
        self._check_request(images, params, tenant)
        self.store.add_job_allowed(max_queued=self.max_queued, max_stored=self.max_stored)
        # 3. The uploads, then the row (a crash between leaves files that start removes).
        row = JobRow(
            job_id=uuid.uuid4().hex,
            state=JobState.QUEUED,
            params=params,
            num_images=len(images),
            skip_register=skip_register,
            total_steps=int(params["steps"]),
            created_at=time.time(),
            tenant=tenant,
            request_id=request_id,
        )
        self.store.files.save_uploads(row.job_id, images)
        try:
            stored = self.store.add_job(row, max_queued=self.max_queued, max_stored=self.max_stored)
        except BaseException:
            self._delete_uploads_unless_stored(row.job_id)
            raise
        if stored.job_id != row.job_id:  # a concurrent retry of the same request won
            self.store.files.delete(row.job_id)
        self._update_gauges()
        return stored

    def get(self, job_id: str, tenant: str | None = None) -> JobRow:
        """The job; ``NOT_FOUND`` also when it is another tenant's (``tenant`` None: any)."""
        row = self.store.get_job(job_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise NotFoundError(f"job {job_id!r} does not exist")
        return row

    def list(self, states: Sequence[JobState] = (), tenant: str | None = None) -> list[JobRow]:
        return self.store.list_jobs(tuple(states), tenant)

    def cancel(self, job_id: str, tenant: str | None = None) -> JobRow:
        """Record the cancel at once (it survives a ``kill -9``); a queued job ends here, a
        running one within one micro-batch, on whichever worker runs it."""
        row = self.get(job_id, tenant)
        if row.state.is_terminal:
            return row
        return self.runs.cancel(job_id)

    def concept_file(self, job_id: str, tenant: str | None = None) -> bytes:
        row = self.get(job_id, tenant)
        if not row.concept_ready:
            raise InvalidInputError(
                f"job {job_id!r} is {row.state}; its file exists once it succeeds"
            )
        data = self.store.files.concept_file(job_id)
        if data is None:
            raise NotFoundError(f"the concept file of job {job_id!r} is gone")
        return data

    def subscribe(self, job_id: str) -> JobEvents:
        """Events of ``job_id`` (JobProgress and JobRow) as they happen, on the caller's loop;
        bounded: a slow reader gets the latest progress, not every step. No store access here
        (it runs on the event loop): the caller looks the job up, off the loop."""
        return self.watchers.subscribe(job_id)

    def unsubscribe(self, job_id: str, events: JobEvents) -> None:
        self.watchers.unsubscribe(job_id, events)

    def purge_expired(self) -> tuple[str, ...]:
        """Delete the files (not the concept, not the row) of jobs past their retention."""
        purged: tuple[str, ...] = ()
        for row in self.store.finished_before(time.time() - self.retention_s):
            self.store.files.purge(row.job_id)
            self.store.update_job(row.job_id, purged_at=time.time())
            purged += (row.job_id,)
        if purged:
            log.info("deleted the files of %d jobs past their retention period", len(purged))
        return purged

    # --- helpers ----------------------------------------------------------------------------

    def _sweep(self) -> None:
        while not self._shutdown.wait(self._sweep_interval_s):
            try:
                self.purge_expired()
            except Exception:
                log.exception("purging expired jobs failed; retried at the next sweep")

    def _check_request(
        self, images: Sequence[UploadedImage], params: dict[str, Any], tenant: str
    ) -> None:
        # Every other parameter was checked at the edge (convert.create_job_from_pb).
        check_uploads(images, max_images=self.max_images, max_bytes=self.max_job_bytes)
        token = check_token(params["token"], self.vocabulary, int(params.get("vectors", 1)))
        check_token_is_free(token, self.registry, self.store, tenant)

    def _delete_uploads_unless_stored(self, job_id: str) -> None:
        """After a failed ``add_job``: its commit may have happened (only the reply was lost),
        so the uploads go only once the row is known to be absent; else start's clean-up (or
        PostgreSQL's, an hour later) removes them."""
        try:
            stored = self.store.get_job(job_id) is not None
        except Exception:
            return
        if not stored:
            self.store.files.delete(job_id)

    def _update_gauges(self) -> None:
        for state, count in self.store.count_jobs().items():
            metrics.JOBS.labels(state=state.value).set(count)
