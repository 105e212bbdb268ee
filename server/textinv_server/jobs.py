"""Inversion jobs: learn a concept on the server, durably, while generation keeps serving.

Scheduling policy. Jobs run on their own worker threads, at most ``max_concurrent_jobs`` at
once; more wait in a bounded queue (past it, creation is refused with RESOURCE_EXHAUSTED). Each
worker thread lowers its own scheduling priority (nice +10 on Linux) and runs torch with one
intra-op thread, so the generation thread, at normal priority, wins the CPU whenever it has work:
generation latency rises only modestly while a job trains, and the job soaks up idle time.

Durability. A job's images and trainer output live in ``DATA/jobs/<job id>/`` (the id is made
here, never taken from a request). The trainer checkpoints every ``checkpoint_every`` steps; when
the server stops, running jobs are asked to stop, which checkpoints them, and stay RUNNING in the
database. At start-up every QUEUED or RUNNING job is queued again and resumes from its newest
checkpoint, also after a ``kill -9``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from textinv.concepts import check_token
from textinv.data import load_training_image
from textinv.errors import InvalidInputError, NotFoundError, OverloadedError
from textinv.model import BaseModel
from textinv.trainer import CHECKPOINT_DIR, CONCEPT_FILE
from textinv_client.choices import JobState
from textinv_client.types import JobProgress  # one training step; the wire's own shape
from textinv_server import metrics
from textinv_server.registry import ConceptRegistry
from textinv_server.store import JobRow, Store

log = logging.getLogger(__name__)

JOB_NICENESS = 10


@dataclass(frozen=True)
class UploadedImage:
    data: bytes
    filename: str  # for messages only
    caption: str | None = None  # "{}" marks the token


JobEvent = JobRow | JobProgress
# The trainer, as the job manager calls it: (params, images folder, output folder, resume,
# progress, should_stop) → the learned concept. ``textinv_trainer`` below is the real one.
TrainFn = Callable[..., Any]


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
    ) -> None:
        self.store, self.registry, self.folder, self._train = store, registry, folder, train
        self.vocabulary = vocabulary
        self.max_images, self.max_steps, self.max_queued = max_images, max_steps, max_queued
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._shutdown = threading.Event()
        self._lock = threading.Lock()
        self._watchers: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]]] = {}
        self._workers = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True)
            for i in range(max_concurrent)
        ]

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Queue again every job a previous run left unfinished, then start the workers."""
        for row in reversed(self.store.list_jobs((JobState.QUEUED, JobState.RUNNING))):
            log.info(
                "job %s was %s when the server stopped; queued to resume", row.job_id, row.state
            )
            self._enqueue(row.job_id)
        for worker in self._workers:
            worker.start()
        self._update_gauges()

    def stop(self, timeout_s: float) -> None:
        """Ask running jobs to checkpoint and stop; they stay RUNNING and resume at start-up."""
        self._shutdown.set()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout_s)

    # --- requests ---------------------------------------------------------------------------

    def create(
        self, images: Sequence[UploadedImage], params: dict[str, Any], skip_register: bool
    ) -> JobRow:
        self._check_request(images, params)
        if self._queue.qsize() >= self.max_queued:
            raise OverloadedError(
                f"{self.max_queued} inversion jobs are waiting already; retry later"
            )
        job_id = uuid.uuid4().hex
        try:
            self._save_images(job_id, images)
        except InvalidInputError:
            shutil.rmtree(self._job_folder(job_id), ignore_errors=True)
            raise
        row = JobRow(
            job_id=job_id,
            state=JobState.QUEUED,
            params=params,
            num_images=len(images),
            skip_register=skip_register,
            total_steps=int(params["steps"]),
            created_at=time.time(),
        )
        self.store.put_job(row)
        self._enqueue(job_id)
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
        row = self.get(job_id)
        if row.state.is_terminal:
            return row
        with self._lock:
            self._cancel.setdefault(job_id, threading.Event()).set()
            row = self.get(job_id)
            if row.state is JobState.QUEUED:  # not started: cancel right here
                row = self._finish(row, JobState.CANCELLED)
        return row

    def concept_file(self, job_id: str) -> bytes:
        row = self.get(job_id)
        if row.state is not JobState.SUCCEEDED:
            raise InvalidInputError(
                f"job {job_id!r} is {row.state}; its file exists once it succeeds"
            )
        return (self._job_folder(job_id) / "out" / CONCEPT_FILE).read_bytes()

    def subscribe(self, job_id: str) -> asyncio.Queue[Any]:
        """Events of ``job_id`` (JobProgress and JobRow) as they happen, on the caller's loop."""
        self.get(job_id)
        events: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            self._watchers.setdefault(job_id, []).append((asyncio.get_running_loop(), events))
        return events

    def unsubscribe(self, job_id: str, events: asyncio.Queue[Any]) -> None:
        with self._lock:
            self._watchers[job_id] = [
                w for w in self._watchers.get(job_id, []) if w[1] is not events
            ]

    # --- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        _lower_priority()
        torch.set_num_threads(1)
        while not self._shutdown.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            self._update_gauges()
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        row = self.get(job_id)
        if row.state not in (JobState.QUEUED, JobState.RUNNING):
            return  # cancelled while it waited
        row = self._save(
            replace(row, state=JobState.RUNNING, started_at=row.started_at or time.time())
        )
        cancel = self._cancel.setdefault(job_id, threading.Event())
        folder = self._job_folder(job_id)
        try:
            concept = self._train(
                params=row.params,
                images=folder / "images",
                out=folder / "out",
                resume=True,
                progress=lambda p: self._on_progress(job_id, p),
                should_stop=lambda: cancel.is_set() or self._shutdown.is_set(),
            )
        except Exception as error:
            self._fail(row, error)
            return
        if cancel.is_set():
            self._finish(self.get(job_id), JobState.CANCELLED)
        elif self._shutdown.is_set() and concept.metadata.steps != row.total_steps:
            log.info("job %s checkpointed at shutdown; it resumes at the next start", job_id)
        else:
            self._succeed(self.get(job_id), concept)

    def _on_progress(self, job_id: str, progress: JobProgress) -> None:
        row = self.get(job_id)
        if progress.step != row.step:
            row = replace(row, step=progress.step, loss=progress.loss)
            self.store.put_job(row)
        self._publish(job_id, progress)

    def _succeed(self, row: JobRow, concept: Any) -> None:
        token = ""
        if not row.skip_register:
            try:
                token = self.registry.register_concept(concept, job_id=row.job_id).token
            except Exception as error:  # e.g. the token was registered meanwhile
                self._fail(row, error)
                return
        self._finish(replace(row, step=row.total_steps, registered_token=token), JobState.SUCCEEDED)

    def _fail(self, row: JobRow, error: Exception) -> None:
        if isinstance(error, InvalidInputError):
            message = str(error)
        else:
            log.exception("job %s failed", row.job_id)
            message = f"internal error while training ({type(error).__name__})"
        self._finish(replace(self.get(row.job_id), error=message), JobState.FAILED)

    def _finish(self, row: JobRow, state: JobState) -> JobRow:
        row = self._save(replace(row, state=state, finished_at=time.time()))
        shutil.rmtree(self._job_folder(row.job_id) / "out" / CHECKPOINT_DIR, ignore_errors=True)
        return row

    def _save(self, row: JobRow) -> JobRow:
        self.store.put_job(row)
        self._publish(row.job_id, row)
        self._update_gauges()
        return row

    # --- helpers ----------------------------------------------------------------------------

    def _check_request(self, images: Sequence[UploadedImage], params: dict[str, Any]) -> None:
        if not 1 <= len(images) <= self.max_images:
            raise InvalidInputError(f"a job takes 1 to {self.max_images} images, got {len(images)}")
        check_token(params["token"], self.vocabulary, int(params.get("vectors", 1)))
        if self.registry.store.get_concept(params["token"]) is not None:
            raise InvalidInputError(
                f"token {params['token']!r} is registered already; delete it or choose another"
            )
        if not str(params.get("init", "")).strip():
            raise InvalidInputError("init_text must not be empty")
        if not 1 <= int(params["steps"]) <= self.max_steps:
            raise InvalidInputError(f"steps must be in 1..{self.max_steps}, got {params['steps']}")

    def _save_images(self, job_id: str, images: Sequence[UploadedImage]) -> None:
        """Save and check each image before the job is accepted.

        Files get server-made names (``000.img``): an upload's file name never becomes a path.
        Errors name the upload's file name, never the server's path.
        """
        folder = self._job_folder(job_id) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            path = folder / f"{index:03d}.img"
            path.write_bytes(image.data)
            if image.caption is not None:
                path.with_suffix(".txt").write_text(image.caption, encoding="utf-8")
            load_training_image(path, name=image.filename or f"image {index}")

    def _job_folder(self, job_id: str) -> Path:
        return self.folder / job_id

    def _enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _publish(self, job_id: str, event: JobEvent) -> None:
        with self._lock:
            watchers = list(self._watchers.get(job_id, []))
        for loop, events in watchers:
            loop.call_soon_threadsafe(events.put_nowait, event)

    def _update_gauges(self) -> None:
        counts = {state: 0 for state in JobState}
        for row in self.store.list_jobs():
            counts[row.state] += 1
        for state, count in counts.items():
            metrics.JOBS.labels(state=state.value).set(count)


def _lower_priority() -> None:
    """Nice this thread (Linux threads have their own priority), so generation wins the CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICENESS)
    except (AttributeError, OSError):
        log.debug("could not lower the job thread's priority", exc_info=True)


def textinv_trainer(model: BaseModel | None, model_name: str | None) -> TrainFn:
    """The real trainer (``textinv.trainer.invert``), sharing the server's loaded model."""
    from textinv.trainer import InvertConfig, Progress, invert

    def train(
        *,
        params: dict[str, Any],
        images: Path,
        out: Path,
        resume: bool,
        progress: Callable[[JobProgress], None],
        should_stop: Callable[[], bool],
    ) -> Any:
        config = InvertConfig(
            **params, images=str(images), out=str(out), model=model_name, resume=resume
        )

        def report(event: Progress) -> None:
            if event.event == "step":
                progress(
                    JobProgress(
                        step=event.step,
                        total_steps=event.total_steps,
                        loss=event.loss,
                        learning_rate=event.lr,
                        steps_per_second=event.steps_per_s,
                        eta_seconds=event.eta_s,
                    )
                )

        return invert(config, report, should_stop, model=model)

    return train
