"""A worker's writes hold only while its lease does, and a store that fails for a moment costs a
job nothing: real SQLite store, real job manager, a stand-in trainer that stages each race."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_jobs_durability import images, params, wait_terminal
from textinv.errors import StoreUnavailableError
from textinv_client.choices import JobState
from textinv_client.types import JobProgress
from textinv_server.jobs import JobManager
from textinv_server.registry import ConceptRegistry
from textinv_server.store_sqlite import SqliteStore

Open = Callable[..., JobManager]


@pytest.fixture
def open_jobs(tiny_model: Any, tmp_path: Path) -> Iterator[Open]:
    managers: list[JobManager] = []

    def open_(train: Any, **settings: Any) -> JobManager:
        store = SqliteStore(tmp_path / "data" / "textinv.db")
        registry = ConceptRegistry(
            store,
            widths=tiny_model.text_widths,
            vocabulary=tiny_model.tokenizer.get_vocab(),
            max_file_bytes=1 << 20,
        )
        jobs = JobManager(
            store,
            registry,
            train,
            vocabulary=tiny_model.tokenizer.get_vocab(),
            max_concurrent=1,
            max_queued=4,
            max_images=4,
            max_steps=100,
            **settings,
        )
        managers.append(jobs)
        return jobs

    yield open_
    for jobs in managers:
        jobs.stop(5)
        jobs.store.close()


class Learned:
    """What the trainer returns, as far as the job manager reads it."""

    class metadata:
        steps = 2

    token = "<never-registered>"


def test_a_worker_that_lost_its_lease_writes_nothing_more(open_jobs: Open) -> None:
    taken_over = threading.Event()

    def train(*, progress: Any, should_stop: Any, **_: Any) -> Any:
        progress(JobProgress(1, 2, 0.5, 1e-3, 1.0, 1.0))
        # Another worker takes the job over (this one's lease lapsed, as in a long pause).
        job_id = jobs.store.list_jobs((JobState.RUNNING,))[0].job_id
        jobs.store.update_job(job_id, lease_expires_at=0.0)
        assert jobs.store.claim_job("other-worker", 30.0) is not None
        taken_over.set()
        progress(JobProgress(2, 2, 0.25, 1e-3, 1.0, 1.0))  # refused: and the run must stop
        assert should_stop()
        return Learned()

    jobs = open_jobs(train)
    row = jobs.create(images(), params("<taken>"), True)
    jobs.start()
    assert taken_over.wait(60)
    time.sleep(0.5)  # the first worker records its outcome (or, rightly, nothing)
    after = jobs.get(row.job_id)
    assert (after.state, after.worker, after.step) == (JobState.RUNNING, "other-worker", 1)
    assert not after.concept_ready and after.finished_at is None


def test_a_checkout_that_fails_gives_the_job_back(open_jobs: Open) -> None:
    trained = threading.Event()

    def train(**_: Any) -> Any:
        trained.set()
        return Learned()

    jobs = open_jobs(train)
    checkout = jobs.store.files.checkout
    failures = [StoreUnavailableError("the store cannot be reached")]

    def failing_once(job_id: str) -> Path:
        if failures:
            raise failures.pop()
        return checkout(job_id)

    row = jobs.create(images(), params("<given-back>"), True)
    jobs.store.files.checkout = failing_once  # type: ignore[method-assign]  # the worker's
    jobs.start()
    final = wait_terminal(jobs, row.job_id, timeout_s=60)
    assert final.state is JobState.SUCCEEDED and trained.is_set()
    assert final.attempts == 1  # the run that could not start gave its attempt back


def test_a_store_outage_during_progress_does_not_fail_the_job(open_jobs: Open) -> None:
    def train(*, progress: Any, **_: Any) -> Any:
        progress(JobProgress(1, 2, 0.5, 1e-3, 1.0, 1.0))
        progress(JobProgress(2, 2, 0.25, 1e-3, 1.0, 1.0))
        return Learned()

    jobs = open_jobs(train)
    update = jobs.store.update_job
    outage = [True]

    def update_failing_once(job_id: str, holder: str | None = None, **changes: Any) -> Any:
        if "progress" in changes and outage:
            outage.pop()
            raise StoreUnavailableError("the store cannot be reached")
        return update(job_id, holder=holder, **changes)

    jobs.store.update_job = update_failing_once  # type: ignore[method-assign]
    row = jobs.create(images(), params("<outage>"), True)
    jobs.start()
    final = wait_terminal(jobs, row.job_id, timeout_s=60)
    assert final.state is JobState.SUCCEEDED, final.error
    assert not outage  # the outage did happen
