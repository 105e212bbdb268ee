"""What only the PostgreSQL store has to get right: several processes on one database at once.

Replicas are ``PostgresStore`` objects on one fresh database (``tests.pg``), each with its own
pool; racing callers are threads released together by a barrier. The listener is cut off by
``pg_terminate_backend``, as a network failure or a server restart would.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.unit.test_store_contract import UNLIMITED, concept, job, png, wait_for
from textinv.errors import AlreadyExistsError, OverloadedError, StoreUnavailableError
from textinv_server.job_uploads import UploadedImage
from textinv_server.store import QUEUED_HINT, StoreEvent, open_store
from textinv_server.store_postgres import PostgresStore
from textinv_server.store_postgres_schema import MIGRATIONS, migrate

Replicas = Callable[[int], list[PostgresStore]]


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[Replicas]:
    """``replicas(n)``: ``n`` stores on the test's database, as ``n`` server processes."""
    opened: list[PostgresStore] = []

    def open_(count: int) -> list[PostgresStore]:
        start = len(opened)
        opened.extend(PostgresStore(pg_url, tmp_path / f"r{start + i}") for i in range(count))
        return opened[start:]

    yield open_
    for store in opened:
        store.close()


def race(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Run ``call(0..count-1)`` on ``count`` threads released at once; results or exceptions."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return call(index)
        except Exception as error:
            return error

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_replicas_starting_at_once_apply_each_migration_once(
    pg_url: str, pg_admin: psycopg.Connection, tmp_path: Path
) -> None:
    stores = race(6, lambda i: PostgresStore(pg_url, tmp_path / str(i)))
    try:
        assert all(isinstance(store, PostgresStore) for store in stores), stores
    finally:
        for store in stores:
            if isinstance(store, PostgresStore):
                store.close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
        assert Counter(row[0] for row in rows) == {version: 1 for version, _ in MIGRATIONS}
        assert migrate(conn) == []  # a later start has nothing to do


def test_two_replicas_claiming_at_once_never_get_the_same_job(replicas: Replicas) -> None:
    first, second = replicas(2)
    for index in range(20):
        first.add_job(job(f"j{index:02d}", created_at=float(index)), **UNLIMITED)
    stores = [first, second, first, second]

    def claim_all(worker: int) -> list[str]:
        claimed = []
        while (row := stores[worker].claim_job(f"w{worker}", lease_s=600)) is not None:
            assert row.worker == f"w{worker}"
            claimed.append(row.job_id)
        return claimed

    results = race(4, claim_all)
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == [f"j{index:02d}" for index in range(20)], results
    assert all(row.attempts == 1 for row in first.list_jobs())


def test_racing_registrations_of_one_token_or_its_look_alikes_have_one_winner(
    replicas: Replicas,
) -> None:
    first, second = replicas(2)
    spellings = ["<cat>", "<CAT>", "<Cat>", "<cat>"] * 2

    def register(index: int) -> str:
        row, data = concept(spellings[index], data=b"vectors %d" % index)
        (first if index % 2 else second).put_concept(row, data, replace=False, max_concepts=10)
        return row.token

    results = race(len(spellings), register)
    winners = [result for result in results if isinstance(result, str)]
    assert len(winners) == 1, results
    assert all(isinstance(r, AlreadyExistsError) for r in results if r not in winners), results
    assert [row.token for row in second.list_concepts("default")] == winners
    assert first.count_concepts("default") == 1


def test_racing_registrations_stop_at_the_tenants_limit(replicas: Replicas, pg_url: str) -> None:
    first, second = replicas(2)

    def register(index: int) -> None:
        row, data = concept(f"<c{index}>")
        (first, second)[index % 2].put_concept(row, data, replace=False, max_concepts=3)

    results = race(8, register)
    assert sum(result is None for result in results) == 3, results
    assert all(isinstance(r, OverloadedError) for r in results if r is not None), results
    with psycopg.connect(pg_url) as conn:
        counted = conn.execute("SELECT COUNT(*) FROM concepts").fetchone()
        kept = conn.execute("SELECT concept_count FROM tenants").fetchall()
    assert counted == (3,) and kept == [(3,)]


def test_a_change_on_one_replica_reaches_the_others_after_commit_only(
    replicas: Replicas,
) -> None:
    writer, reader = replicas(2)
    events: list[StoreEvent] = []
    reader.subscribe(events.append)
    row, data = concept("<cat>", "a")
    writer.put_concept(row, data, replace=False, max_concepts=10)
    with pytest.raises(AlreadyExistsError):  # rolled back: announces nothing
        writer.put_concept(row, data, replace=False, max_concepts=10)
    writer.add_job(job("j1"), **UNLIMITED)
    assert wait_for(lambda: StoreEvent("job", key=QUEUED_HINT, job_id="j1") in events), events
    assert events.count(StoreEvent("concept", tenant="a", key="<cat>")) == 1, events


def test_the_listener_reconnects_and_resets_after_its_connection_is_killed(
    replicas: Replicas, pg_admin: psycopg.Connection
) -> None:
    (store,) = replicas(1)
    events: list[StoreEvent] = []
    store.subscribe(events.append)
    killed = store.listener_pid
    assert killed
    pg_admin.execute("SELECT pg_terminate_backend(%s)", (killed,))
    assert wait_for(lambda: StoreEvent("reset") in events), events
    assert store.listener_pid not in (0, killed)
    store.add_job(job("after"), **UNLIMITED)  # announced on the new connection
    assert wait_for(lambda: StoreEvent("job", key=QUEUED_HINT, job_id="after") in events), events


@pytest.mark.parametrize("port", ["1", "5432"])
def test_connection_errors_never_show_the_password(port: str, tmp_path: Path) -> None:
    # Port 1: nothing listens; 5432: the server refuses the wrong password.
    url = f"postgresql://textinv:not-the-pa55word@127.0.0.1:{port}/postgres"
    with pytest.raises(StoreUnavailableError) as caught:
        open_store(url, tmp_path)
    message = str(caught.value)
    assert "cannot be reached" in message and "127.0.0.1" in message
    assert "not-the-pa55word" not in message and url not in message


def test_orphaned_job_files_are_removed_once_old_enough(replicas: Replicas, pg_url: str) -> None:
    (store,) = replicas(1)
    for job_id in ("old-orphan", "new-orphan", "kept"):
        store.files.save_uploads(job_id, [UploadedImage(png(0), "a.png")])
    store.add_job(job("kept"), **UNLIMITED)
    with psycopg.connect(pg_url) as conn:  # as if saved two hours ago, by a replica that died
        conn.execute(
            "UPDATE job_files SET saved_at = now() - interval '2 hours' WHERE job_id <> %s",
            ("new-orphan",),
        )
    assert store.files.remove_orphans(store.job_ids()) == ["old-orphan"]
    assert (store.files.checkout("new-orphan") / "images" / "000.img").read_bytes() == png(0)
    assert (store.files.checkout("kept") / "images" / "000.img").is_file()


def test_job_file_paths_stay_inside_the_job_folder(replicas: Replicas, pg_url: str) -> None:
    (store,) = replicas(1)
    with psycopg.connect(pg_url) as conn:  # a row no server writes: refused all the same
        conn.execute("INSERT INTO job_files (job_id, path, data) VALUES ('j1', '../x', 'x')")
    with pytest.raises(ValueError, match="outside"):
        store.files.checkout("j1")
    with pytest.raises(ValueError):
        store.files.checkout("../j1")
