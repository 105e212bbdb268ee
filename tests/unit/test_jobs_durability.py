"""Inversion jobs that cannot poison the server: limits, retention, attempts, durable cancel,
the data folder's lock, clean-up at start, a full disk, and registration races.

Real SQLite, real files, the real trainer on the tiny model; only the gRPC layer is left out.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from tests.integration.test_server_jobs import training_images
from textinv.concepts import Concept, concept_to_bytes, parse_concept
from textinv.errors import DataFolderLockedError, OverloadedError, StorageFullError
from textinv_client.choices import JobState
from textinv_client.types import JobProgress
from textinv_server.job_events import JobEvents
from textinv_server.jobs import JobManager, UploadedImage, textinv_trainer
from textinv_server.registry import ConceptRegistry
from textinv_server.store import DEFAULT_TENANT, JobRow
from textinv_server.store_sqlite import SqliteStore as Store

Open = Callable[..., JobManager]


def images(count: int = 2) -> list[UploadedImage]:
    return [UploadedImage(image.data, image.filename) for image in training_images(count)]


def params(token: str, steps: int = 2) -> dict[str, Any]:
    return {"token": token, "init": "toy", "steps": steps, "seed": 1, "checkpoint_every": 1}


@pytest.fixture
def open_jobs(tiny_model: Any, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Open]:
    """Open the data folder as a server does (store, registry, jobs); closed at the end."""
    opened: list[JobManager] = []

    def open_(train: Any = None, **limits: Any) -> JobManager:
        store = Store(tmp_path / "data" / "textinv.db")
        registry = ConceptRegistry(
            store,
            widths=tiny_model.text_widths,
            vocabulary=tiny_model.tokenizer.get_vocab(),
            max_file_bytes=1 << 20,
        )
        settings: dict[str, Any] = {"max_concurrent": 1, "max_queued": 4, "max_images": 4}
        settings |= {"max_steps": 100} | limits
        jobs = JobManager(
            store,
            registry,
            train or textinv_trainer(tiny_model, str(tiny_model_dir)),
            vocabulary=tiny_model.tokenizer.get_vocab(),
            **settings,
        )
        opened.append(jobs)
        return jobs

    yield open_
    for jobs in opened:
        close(jobs)


def close(jobs: JobManager) -> None:
    jobs.stop(30)
    store = cast(Store, jobs.store)  # the SQLite store: its lock's descriptor says if open
    if store._lock_fd >= 0:
        store.close()
        store._lock_fd = -1


def wait_terminal(jobs: JobManager, job_id: str, timeout_s: float = 120) -> JobRow:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = jobs.get(job_id)
        if row.state.is_terminal:
            return row
        time.sleep(0.05)
    raise TimeoutError(jobs.get(job_id))


def test_queued_and_stored_jobs_are_bounded_and_retention_frees_them(open_jobs: Open) -> None:
    jobs = open_jobs(max_queued=2, max_stored=3, retention_s=3600)  # no workers: jobs wait
    first, second = (jobs.create(images(), params(f"<q{i}>"), False) for i in range(2))
    with pytest.raises(OverloadedError, match="2 inversion jobs are waiting"):
        jobs.create(images(), params("<q2>"), False)
    jobs.cancel(first.job_id)
    third = jobs.create(images(), params("<q3>"), False)
    jobs.cancel(second.job_id)
    jobs.cancel(third.job_id)
    with pytest.raises(OverloadedError, match="stores 3 inversion jobs"):
        jobs.create(images(), params("<q4>"), False)
    folder = jobs.store.files.checkout(first.job_id) / "images"
    assert folder.is_dir()
    jobs.retention_s = 0.0  # every finished job is now past its retention period
    assert set(jobs.purge_expired()) == {first.job_id, second.job_id, third.job_id}
    assert not folder.exists() and jobs.get(first.job_id).purged_at is not None
    jobs.create(images(), params("<q4>"), False)  # room again


def test_a_cancel_is_durable_across_a_restart(open_jobs: Open) -> None:
    jobs = open_jobs()
    row = jobs.create(images(), params("<gone>"), False)
    jobs.store.update_job(row.job_id, state=JobState.RUNNING)  # as if a worker had started it
    assert jobs.cancel(row.job_id).cancel_requested
    close(jobs)  # the process dies; nothing more is written
    restarted = open_jobs()
    restarted.start()
    assert wait_terminal(restarted, row.job_id).state is JobState.CANCELLED


def test_a_job_that_kept_killing_the_server_fails_after_its_attempts(open_jobs: Open) -> None:
    jobs = open_jobs(max_attempts=2)
    poison = jobs.create(images(), params("<poison>"), False)
    fine = jobs.create(images(), params("<fine>"), False)
    jobs.store.update_job(poison.job_id, state=JobState.RUNNING, attempts=2)
    jobs.store.update_job(fine.job_id, state=JobState.RUNNING, attempts=1)
    close(jobs)
    restarted = open_jobs(max_attempts=2)
    restarted.start()
    failed = wait_terminal(restarted, poison.job_id)
    assert failed.state is JobState.FAILED and "interrupted 2 times" in failed.error
    resumed = wait_terminal(restarted, fine.job_id)
    assert resumed.state is JobState.SUCCEEDED and resumed.attempts == 2


def test_a_second_server_on_the_same_folder_fails_at_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "textinv.db")
    with pytest.raises(DataFolderLockedError, match=str(tmp_path)):
        Store(tmp_path / "textinv.db")
    store.close()
    Store(tmp_path / "textinv.db").close()  # free again once the first one closed


def test_leftovers_of_a_crash_are_removed_at_start(open_jobs: Open, tmp_path: Path) -> None:
    jobs = open_jobs()
    kept = jobs.create(images(), params("<kept>"), False)
    jobs.cancel(kept.job_id)
    close(jobs)
    data = tmp_path / "data"
    temporaries = [
        data / "concepts" / ".abc.safetensors.x1y2.tmp",
        data / "jobs" / kept.job_id / "out" / ".config.json.q.tmp",
    ]
    for path in temporaries:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    orphan = data / "jobs" / "0123456789abcdef0123456789abcdef"
    (orphan / "images").mkdir(parents=True)
    restarted = open_jobs()
    restarted.start()
    assert not any(path.exists() for path in temporaries) and not orphan.exists()
    assert (data / "jobs" / kept.job_id / "images").is_dir()


def test_a_full_disk_is_resource_exhausted_and_rolls_back(tmp_path: Path) -> None:
    store = Store(tmp_path / "textinv.db")
    row = JobRow("a", JobState.QUEUED, {"token": "<a>"}, 1, False, 2, time.time())
    store.put_job(row)
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # the database cannot grow
    big = JobRow("b", JobState.QUEUED, {"blob": "x" * 200_000}, 1, False, 2, time.time())
    with pytest.raises(StorageFullError, match="storage is full"):
        store.put_job(big)
    assert not store._db.in_transaction  # rolled back, not wedged
    assert [r.job_id for r in store.list_jobs()] == ["a"]
    store.update_job("a", step=1)  # small writes still work
    store._db.execute(f"PRAGMA max_page_count = {pages * 1000}")
    store.put_job(big)
    assert {r.job_id for r in store.list_jobs()} == {"a", "b"}
    store.close()


def test_a_token_registered_meanwhile_is_never_replaced(
    open_jobs: Open, tiny_model: Any, tiny_model_dir: Path
) -> None:
    real_train = textinv_trainer(tiny_model, str(tiny_model_dir))
    registries: list[ConceptRegistry] = []
    theirs = concept_to_bytes(Concept("<race>", torch.ones(1, tiny_model.text_width)))

    def train_while_someone_registers(**kwargs: Any) -> Any:
        registries[0].register(theirs, "theirs.safetensors")
        return real_train(**kwargs)

    jobs = open_jobs(train=train_while_someone_registers)
    registries.append(jobs.registry)
    row = jobs.create(images(), params("<race>"), False)
    jobs.start()
    final = wait_terminal(jobs, row.job_id)
    assert final.state is JobState.FAILED and "registered by someone else" in final.error
    assert jobs.registry.get(DEFAULT_TENANT, "<race>").job_id == ""  # theirs, untouched
    learned = parse_concept(jobs.concept_file(row.job_id), "job file")
    assert learned.token == "<race>" and learned.metadata.steps == 2


def test_a_slow_watcher_gets_the_latest_progress_not_a_backlog() -> None:
    async def scenario() -> list[Any]:
        events = JobEvents(asyncio.get_running_loop())
        row = JobRow("a", JobState.RUNNING, {}, 1, False, 1000, 0.0)
        events.put(row)
        for step in range(1, 1001):
            events.put(JobProgress(step, 1000, 0.5, 1e-3, 10.0, 1.0))
        events.put(JobRow("a", JobState.SUCCEEDED, {}, 1, False, 1000, 0.0))
        assert events.qsize() == 3
        return [await events.get() for _ in range(3)]

    running, latest, done = asyncio.run(scenario())
    assert running.state is JobState.RUNNING and latest.step == 1000
    assert done.state is JobState.SUCCEEDED


def test_a_stop_that_outlasts_its_grace_is_no_crash_attempt(open_jobs: Open) -> None:
    """A micro-step longer than the stop's grace: the worker is still busy when stop returns, yet
    the run was stopped on request, so its attempt is taken back (once) and the job resumes."""
    started, release = threading.Event(), threading.Event()

    def slow_train(**_: Any) -> Any:  # one micro-step that ignores should_stop for a while
        started.set()
        release.wait(30)
        raise RuntimeError("stopped")  # what a torn-down process never gets to report

    jobs = open_jobs(train=slow_train)
    jobs.start()
    job = jobs.create(images(), params("<slow>"), False)
    assert started.wait(30)
    assert jobs.get(job.job_id).attempts == 1
    jobs.stop(0.1)
    assert jobs.get(job.job_id).attempts == 0
    assert jobs.get(job.job_id).state is JobState.QUEUED  # given back: the next worker resumes it
    release.set()
