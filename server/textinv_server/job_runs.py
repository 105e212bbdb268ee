"""The workers of ``JobManager``: claim a job from the store, hold its lease, train, record.

One run, by one worker thread: claim (``Store.claim_job``, under a lease name of its own) → settle
a job that must not run (cancelled, out of attempts) → check the job's files out → train, saving
every checkpoint to the store → record the outcome → drop the local checkout.

Every write of a run is conditional on its lease (``update_job(holder=...)``, ``sync(holder=...)``):
once another worker holds the job, this one's writes change nothing and it stops. A lease thread
renews every running job's lease each ``lease_s / 3``, through the shutdown's grace too; a run that
could not renew for ``2/3 lease_s`` (the store unreachable) stops by itself, before another
worker may take the job. A store that is unreachable at the end gives the job back (or lets its
lease lapse) rather than failing it: it resumes from its last checkpoint. A cancel reaches a
running job from any replica through the store's announcement, and at the latest with the next
renewal.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from textinv.errors import StoreUnavailableError, TextInvError
from textinv_client.choices import JobState
from textinv_client.types import JobProgress
from textinv_server.job_files import IMAGES_DIR, OUT_DIR, check_job_bytes
from textinv_server.job_tokens import register_learned
from textinv_server.job_trainer import TrainFn, lower_priority
from textinv_server.registry import ConceptRegistry
from textinv_server.store import (
    CANCEL_HINT,
    QUEUED_HINT,
    JobRow,
    LeaseLostError,
    Store,
    StoreEvent,
    disk_full_error,
    is_disk_full,
)

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle worker looks for jobs whose lease ran out


class _Run:
    """What the threads share about one job this process trains."""

    def __init__(self, row: JobRow) -> None:
        self.row = row
        self.holder = row.worker  # this claim's own lease name
        self.renewed_at = time.monotonic()
        self.cancel = threading.Event()
        self.lost = threading.Event()  # the lease is (or may be) another worker's now
        self.released = False  # given back at shutdown: the outcome is no longer ours


class JobRuns:
    def __init__(
        self,
        store: Store,
        registry: ConceptRegistry,
        train: TrainFn,
        *,
        workers: int,
        worker_id: str,
        lease_s: float,
        max_attempts: int,
        max_job_bytes: int,
        on_change: Callable[[], None],
    ) -> None:
        self.store, self.registry, self._train = store, registry, train
        self.worker_id, self.lease_s = worker_id, lease_s
        self.max_attempts, self.max_job_bytes = max_attempts, max_job_bytes
        self._on_change = on_change
        self._shutdown = threading.Event()  # claim nothing more; runs checkpoint and stop
        self._closed = threading.Event()  # stop() is over: leases are no longer renewed
        self._wake = threading.Event()  # a job may be waiting
        self._lock = threading.Lock()  # the runs table
        self._runs: dict[str, _Run] = {}
        self._workers = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            for i in range(workers)
        ]
        self._leases = threading.Thread(target=self._renew_leases, name="job-leases", daemon=True)

    def start(self) -> None:
        for thread in self._workers:
            thread.start()
        if self._workers:
            self._leases.start()

    def stop(self, timeout_s: float) -> None:
        """Stop claiming; ask running jobs to checkpoint and stop; give back their leases. A run
        still in a micro-step when ``timeout_s`` ends is given back too (no crash attempt)."""
        self._shutdown.set()
        self._wake.set()
        for thread in self._workers:
            if thread.ident is not None:
                thread.join(timeout_s)
        with self._lock:
            still_running = list(self._runs.values())
        for run in still_running:
            self._release(run)
        self._closed.set()

    def on_store_event(self, event: StoreEvent) -> None:
        """A store listener (it must be quick): wake idle workers when a job became claimable;
        pass a cancel, from any replica, on to a run here."""
        if event.kind == "reset" or (event.kind == "job" and event.key == QUEUED_HINT):
            self._wake.set()
        if event.kind == "job" and event.key == CANCEL_HINT:
            with self._lock:
                run = self._runs.get(event.job_id)
            if run is not None:
                run.cancel.set()

    def cancel(self, job_id: str) -> JobRow:
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.cancel.set()
        row = self._update(job_id, cancel_requested=True)
        if row.state is JobState.QUEUED:  # no worker holds it: cancel right here
            row = self._finish(job_id, JobState.CANCELLED) or self._get(job_id)
        return row

    # --- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        lower_priority()
        torch.set_num_threads(1)
        while not self._shutdown.is_set():
            self._wake.clear()
            try:
                holder = f"{self.worker_id}/{uuid.uuid4().hex[:12]}"
                row = self.store.claim_job(holder, self.lease_s)
                if row is not None:
                    self._run(row)
                    self._on_change()
                    continue
            except Exception:  # the store is unreachable or the disk full: keep working
                log.exception("a job worker survived an error")
            self._wake.wait(IDLE_POLL_S)

    def _run(self, row: JobRow) -> None:
        run = _Run(row)
        if self._settle_unrunnable(run) is not None:
            return
        with self._lock:
            self._runs[row.job_id] = run
        try:
            outcome = self._train_run(run)
        finally:
            with self._lock:
                self._runs.pop(row.job_id, None)
        try:
            self._record(run, outcome)
        finally:
            self.store.files.release(row.job_id)

    def _train_run(self, run: _Run) -> Any:
        """The learned concept, or the exception that ended the run (the checkout's included)."""
        job_id = run.row.job_id
        try:
            folder = self.store.files.checkout(job_id)
            return self._train(
                params=run.row.params,
                images=folder / IMAGES_DIR,
                out=folder / OUT_DIR,
                resume=True,
                progress=lambda p: self._on_progress(run, p),
                on_files=lambda: self._on_files(run, folder),
                should_stop=lambda: self._should_stop(run),
            )
        except Exception as error:
            return error

    def _record(self, run: _Run, outcome: Any) -> None:
        """Write what the run ended with, while the job is still this worker's."""
        job_id = run.row.job_id
        if run.lost.is_set() or run.released or isinstance(outcome, LeaseLostError):
            log.info("job %s: left to the worker that holds it now", job_id)
        elif isinstance(outcome, StoreUnavailableError):
            log.warning("job %s: the store was unreachable; it resumes elsewhere", job_id)
            self._give_back(run)
        elif isinstance(outcome, Exception):
            self._fail(run, outcome)
        elif run.cancel.is_set() or self._get(job_id).cancel_requested:
            self._finish(job_id, JobState.CANCELLED, holder=run.holder)
        elif self._shutdown.is_set() and outcome.metadata.steps != run.row.total_steps:
            self.store.files.sync(job_id, run.holder)
            self._release(run)
            log.info("job %s checkpointed at shutdown; another start resumes it", job_id)
        else:
            self.store.files.sync(job_id, run.holder)  # the learned concept, for GetJob anywhere
            self._succeed(run, outcome)

    def _should_stop(self, run: _Run) -> bool:
        if time.monotonic() - run.renewed_at > self.lease_s * 2 / 3:
            run.lost.set()  # not renewed for a while: another worker may take the job soon
        return run.cancel.is_set() or run.lost.is_set() or self._shutdown.is_set()

    def _on_files(self, run: _Run, folder: Path) -> None:
        """After a checkpoint or grid: the job's byte budget, then the files to the store."""
        check_job_bytes(folder, self.max_job_bytes)
        self.store.files.sync(run.row.job_id, run.holder)

    def _on_progress(self, run: _Run, progress: JobProgress) -> None:
        """Best effort: a step's figures are not worth failing a job over a store outage."""
        try:
            row = self.store.update_job(
                run.row.job_id,
                holder=run.holder,
                step=progress.step,
                loss=progress.loss,
                progress=asdict(progress),
            )
        except StoreUnavailableError:
            return
        if row is None:
            run.lost.set()

    # --- leases -----------------------------------------------------------------------------

    def _renew_leases(self) -> None:
        while not self._closed.wait(self.lease_s / 3):
            with self._lock:
                runs = list(self._runs.values())
            for run in runs:
                self._renew(run)

    def _renew(self, run: _Run) -> None:
        try:
            row = self.store.renew_lease(run.row.job_id, run.holder, self.lease_s)
        except Exception:  # unreachable for now: the lease lasts until the next try
            log.warning("job %s: renewing its lease failed", run.row.job_id, exc_info=True)
            return
        if row is None:
            log.warning("job %s: its lease was taken over; stopping", run.row.job_id)
            run.lost.set()
            return
        run.renewed_at = time.monotonic()
        if row.cancel_requested:
            run.cancel.set()

    def _release(self, run: _Run) -> None:
        """Give the job back (QUEUED, its attempt returned), once: the run stopped on request."""
        with self._lock:
            if run.released:
                return
            run.released = True
        self._give_back(run)

    def _give_back(self, run: _Run) -> None:
        try:
            self.store.release_job(run.row.job_id, run.holder)
        except StoreUnavailableError:  # then its lease lapses, and another worker takes it
            log.warning("job %s: could not give it back; its lease will lapse", run.row.job_id)

    # --- outcomes ---------------------------------------------------------------------------

    def _settle_unrunnable(self, run: _Run) -> JobRow | None:
        """End a claimed job that was cancelled, or that ran out of attempts (the claim counted
        this one); ``None`` if it may run."""
        row = run.row
        if row.cancel_requested:
            return self._finish(row.job_id, JobState.CANCELLED, holder=run.holder)
        interrupted = row.attempts - 1
        if interrupted >= self.max_attempts:
            log.error("job %s stopped its worker %d times; not retried", row.job_id, interrupted)
            error = (
                f"the job was interrupted {interrupted} times by a server crash or kill while "
                "it trained, and is not retried"
            )
            return self._finish(row.job_id, JobState.FAILED, holder=run.holder, error=error)
        return None

    def _succeed(self, run: _Run, concept: Any) -> None:
        job_id = run.row.job_id
        row = self.store.update_job(job_id, holder=run.holder, concept_ready=True)
        if row is None:
            return  # the lease was lost: the job is another worker's to finish
        if row.skip_register:
            self._finish(job_id, JobState.SUCCEEDED, holder=run.holder, step=row.total_steps)
            return
        try:
            token = register_learned(self.registry, concept, row.job_id, row.tenant)
        except TextInvError as error:
            message = f"training finished, but its concept was not registered: {error}"
            self._finish(
                job_id, JobState.FAILED, holder=run.holder, step=row.total_steps, error=message
            )
            return
        self._finish(
            job_id,
            JobState.SUCCEEDED,
            holder=run.holder,
            step=row.total_steps,
            registered_token=token,
        )

    def _fail(self, run: _Run, error: Exception) -> None:
        job_id = run.row.job_id
        if is_disk_full(error):
            message = str(disk_full_error())
        elif isinstance(error, TextInvError):
            message = str(error)
        else:
            log.exception("job %s failed", job_id, exc_info=error)
            message = f"internal error while training ({type(error).__name__})"
        self._finish(job_id, JobState.FAILED, holder=run.holder, error=message)

    def _finish(
        self, job_id: str, state: JobState, holder: str | None = None, **changes: Any
    ) -> JobRow | None:
        """End the job (only while ``holder`` holds it, when given); None if it was not ours."""
        row = self.store.update_job(
            job_id,
            holder=holder,
            state=state,
            finished_at=time.time(),
            worker="",
            lease_expires_at=None,
            **changes,
        )
        if row is None:
            return None
        self.store.files.discard_checkpoints(job_id)
        self._on_change()
        return row

    def _update(self, job_id: str, **changes: Any) -> JobRow:
        row = self.store.update_job(job_id, **changes)
        if row is None:
            raise TextInvError(f"job {job_id!r} does not exist")
        return row

    def _get(self, job_id: str) -> JobRow:
        row = self.store.get_job(job_id)
        if row is None:
            raise TextInvError(f"job {job_id!r} does not exist")
        return row
