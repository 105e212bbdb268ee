"""The embedded store: one SQLite database and the data folder, owned by one server process.

Rows are small; the concept vectors live beside the database as content-addressed safetensors
files (``concepts/<sha256>.safetensors``), written atomically before their row is committed, so a
``kill -9`` at any point leaves either the old state or the new one. A token or a job id never
becomes a path: file names are hashes and server-made ids only. Jobs' files live in
``jobs/<job id>/`` (``FolderJobFiles``), where the trainer writes them directly.

One server per data folder: opening the store takes an exclusive ``flock`` on ``textinv.lock``,
held until ``close`` (the kernel drops it when the process dies, even by ``kill -9``). With the
lock held, no other process can hold a job's lease, so leases left by a previous run are expired
at once, and temporary files that a crash left behind (``.name.XXXX.tmp``) are deleted. Every
write is one transaction (``BEGIN IMMEDIATE``, so checks inside it see every committed write); a
full disk is a ``StorageFullError`` (RESOURCE_EXHAUSTED), and the connection stays usable.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from textinv.concept_table import fold
from textinv_client.choices import JobState
from textinv_server.job_files import FolderJobFiles
from textinv_server.store import (
    CANCEL_HINT,
    QUEUED_HINT,
    ConceptRow,
    JobRow,
    Listener,
    StoreEvent,
    disk_full_error,
    is_disk_full,
    too_many_concepts_error,
)
from textinv_server.store_rows import (
    check_can_put,
    concept_values,
    job_from_mapping,
    job_values,
    updatable_job_columns,
)
from textinv_server.store_sqlite_setup import (
    ConceptFiles,
    check_job_capacity,
    job_by_request,
    lock_folder,
    migrate,
    remove_temporary_files,
)

log = logging.getLogger(__name__)


class SqliteStore:
    """Thread-safe access to the database; every write is one committed transaction."""

    kind = "sqlite"
    shared = False  # one process: every change is this one's

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.folder = path, path.parent
        self.concept_files = ConceptFiles(self.folder / "concepts")
        self.files = FolderJobFiles(self.folder / "jobs")
        self._lock = threading.Lock()  # the connection; always taken after _files_lock
        self._files_lock = threading.Lock()  # concept files against their rows
        self._listeners: list[Listener] = []
        self._lock_fd = lock_folder(self.folder)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
            self._migrate()
            self._expire_leases()
        except BaseException:
            os.close(self._lock_fd)
            raise
        remove_temporary_files(self.folder)
        referenced = {row[0] for row in self._read("SELECT DISTINCT sha256 FROM concepts")}
        self.concept_files.remove_orphans(referenced)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)  # releases the folder's lock

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _announce(self, event: StoreEvent) -> None:
        for listener in list(self._listeners):
            listener(event)

    # --- schema -----------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._transaction() as db:
            migrate(db, self.path.name)

    def _expire_leases(self) -> None:
        """Holding the folder's lock, no other worker can be alive: leases left are stale."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE state = 'running'")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT``; any failure, the commit's too, rolls back."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if is_disk_full(error):
                    raise disk_full_error() from error
                raise

    def _read(self, query: str, values: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(query, values).fetchall()

    # --- concepts ---------------------------------------------------------------------------

    def put_concept(
        self, row: ConceptRow, data: bytes, *, replace: bool, max_concepts: int
    ) -> ConceptRow | None:
        # File first (atomic, content-addressed), then the row: a crash between leaves an unused
        # file, which the next start removes, and never a row without its file. Files are shared
        # by equal uploads (any tenant's): the files lock keeps another call from dropping this
        # one's file between its write and its row's commit.
        key = fold(row.token)
        with self._files_lock:
            self.concept_files.write(row.sha256, data)
            try:
                previous = self._insert_concept(row, key, replace, max_concepts)
            except BaseException:  # refused or failed: the file just written may be nobody's
                self._drop_unused_file(row.sha256)
                raise
            if previous is not None and previous.sha256 != row.sha256:
                self._drop_unused_file(previous.sha256)
        self._announce(StoreEvent("concept", tenant=row.tenant, key=key))
        return previous

    def _insert_concept(
        self, row: ConceptRow, key: str, replace: bool, max_concepts: int
    ) -> ConceptRow | None:
        with self._transaction() as db:
            found = db.execute(
                "SELECT * FROM concepts WHERE tenant = ? AND fold = ?", (row.tenant, key)
            ).fetchall()
            previous = check_can_put(row, [_concept_from_row(r) for r in found], replace)
            if previous is None:
                count = db.execute(
                    "SELECT COUNT(*) FROM concepts WHERE tenant = ?", (row.tenant,)
                ).fetchone()[0]
                if count >= max_concepts:
                    raise too_many_concepts_error(max_concepts)
            values = concept_values(row)
            marks = ", ".join("?" for _ in values)
            db.execute(
                f"INSERT OR REPLACE INTO concepts ({', '.join(values)}) VALUES ({marks})",
                tuple(values.values()),
            )
        return previous

    def delete_concept(self, tenant: str, token: str) -> ConceptRow | None:
        with self._files_lock, self._transaction() as db:
            found = db.execute(
                "SELECT * FROM concepts WHERE tenant = ? AND token = ?", (tenant, token)
            ).fetchone()
            if found is None:
                return None
            db.execute("DELETE FROM concepts WHERE tenant = ? AND token = ?", (tenant, token))
        row = _concept_from_row(found)
        with self._files_lock:
            self._drop_unused_file(row.sha256)
        self._announce(StoreEvent("concept", tenant=tenant, key=fold(token)))
        return row

    def get_concept(self, tenant: str, token: str) -> ConceptRow | None:
        rows = self._read("SELECT * FROM concepts WHERE tenant = ? AND token = ?", (tenant, token))
        return _concept_from_row(rows[0]) if rows else None

    def find_concepts(self, tenant: str, keys: Collection[str]) -> list[ConceptRow]:
        found: list[ConceptRow] = []
        keys = list(keys)
        for start in range(0, len(keys), 500):  # SQLite binds at most 999 values per query
            chunk = keys[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            rows = self._read(
                f"SELECT * FROM concepts WHERE tenant = ? AND fold IN ({marks}) ORDER BY token",
                (tenant, *chunk),
            )
            found += [_concept_from_row(row) for row in rows]
        return found

    def concept_data(self, row: ConceptRow) -> bytes:
        return self.concept_files.read(row.sha256)

    def list_concepts(self, tenant: str, after: str = "", limit: int = -1) -> list[ConceptRow]:
        rows = self._read(
            "SELECT * FROM concepts WHERE tenant = ? AND token > ? ORDER BY token LIMIT ?",
            (tenant, after, limit),
        )
        return [_concept_from_row(row) for row in rows]

    def all_concepts(self) -> list[ConceptRow]:
        """Every tenant's concepts (for ``textinv store migrate``)."""
        rows = self._read("SELECT * FROM concepts ORDER BY tenant, token")
        return [_concept_from_row(row) for row in rows]

    def count_concepts(self, tenant: str) -> int:
        query = "SELECT COUNT(*) FROM concepts WHERE tenant = ?"
        return int(self._read(query, (tenant,))[0][0])

    def damaged_concepts(self) -> list[tuple[ConceptRow, str]]:
        rows = map(_concept_from_row, self._read("SELECT * FROM concepts"))
        return [(row, why) for row in rows if (why := self.concept_files.damage(row.sha256))]

    def _drop_unused_file(self, sha256: str) -> None:
        """Delete the file of ``sha256`` unless a row uses it (the caller holds the files
        lock)."""
        if not self._read("SELECT 1 FROM concepts WHERE sha256 = ? LIMIT 1", (sha256,)):
            self.concept_files.delete(sha256)

    # --- jobs -------------------------------------------------------------------------------

    def add_job_allowed(self, *, max_queued: int, max_stored: int) -> None:
        with self._lock:
            check_job_capacity(self._db, max_queued, max_stored)

    def add_job(self, row: JobRow, *, max_queued: int, max_stored: int) -> JobRow:
        with self._transaction() as db:
            earlier = job_by_request(db, row.tenant, row.request_id)
            if earlier is not None:
                return earlier
            check_job_capacity(db, max_queued, max_stored)
            _insert_job(db, row)
        self._announce(StoreEvent("job", key=QUEUED_HINT, job_id=row.job_id))
        return row

    def find_job_by_request(self, tenant: str, request_id: str) -> JobRow | None:
        with self._lock:
            return job_by_request(self._db, tenant, request_id)

    def put_job(self, row: JobRow) -> None:
        with self._transaction() as db:
            _insert_job(db, row)
        self._announce(StoreEvent("job", job_id=row.job_id))

    def update_job(self, job_id: str, holder: str | None = None, **changes: Any) -> JobRow | None:
        values = job_values(updatable_job_columns(changes))
        assignments = ", ".join(f"{name} = ?" for name in values)
        held = "" if holder is None else " AND worker = ? AND state = 'running'"
        where = (job_id,) if holder is None else (job_id, holder)
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?{held}", (*values.values(), *where)
            ).rowcount
            found = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if found is None or not changed:
            return None
        hint = CANCEL_HINT if changes.get("cancel_requested") else ""
        self._announce(StoreEvent("job", key=hint, job_id=job_id))
        return job_from_mapping(dict(found))

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return job_from_mapping(dict(rows[0])) if rows else None

    def list_jobs(
        self, states: tuple[JobState, ...] = (), tenant: str | None = None
    ) -> list[JobRow]:
        conditions, values = [], []
        if states:
            conditions.append(f"state IN ({', '.join('?' for _ in states)})")
            values += [state.value for state in states]
        if tenant is not None:
            conditions.append("tenant = ?")
            values.append(tenant)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        rows = self._read(
            f"SELECT * FROM jobs{where} ORDER BY created_at DESC, job_id", tuple(values)
        )
        return [job_from_mapping(dict(row)) for row in rows]

    def job_ids(self) -> set[str]:
        return {row[0] for row in self._read("SELECT job_id FROM jobs")}

    def count_jobs(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for state, count in self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = int(count)
        return counts

    def finished_before(self, finished_at: float) -> list[JobRow]:
        rows = self._read(
            "SELECT * FROM jobs WHERE purged_at IS NULL AND finished_at IS NOT NULL "
            "AND finished_at < ? ORDER BY finished_at",
            (finished_at,),
        )
        return [job_from_mapping(dict(row)) for row in rows]

    # --- leases -----------------------------------------------------------------------------

    def claim_job(self, worker: str, lease_s: float) -> JobRow | None:
        now = time.time()
        with self._transaction() as db:
            found = db.execute(
                "SELECT job_id FROM jobs WHERE state = 'queued' OR (state = 'running' AND "
                "COALESCE(lease_expires_at, 0) < ?) ORDER BY created_at, job_id LIMIT 1",
                (now,),
            ).fetchone()
            if found is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', worker = ?, lease_expires_at = ?, "
                "attempts = attempts + 1, started_at = COALESCE(started_at, ?) WHERE job_id = ?",
                (worker, now + lease_s, now, found[0]),
            )
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (found[0],)).fetchone()
        self._announce(StoreEvent("job", job_id=found[0]))
        return job_from_mapping(dict(row))

    def renew_lease(self, job_id: str, worker: str, lease_s: float) -> JobRow | None:
        return self._if_held(
            job_id, worker, "lease_expires_at = ?", (time.time() + lease_s,), announce=False
        )

    def release_job(self, job_id: str, worker: str) -> JobRow | None:
        return self._if_held(
            job_id,
            worker,
            "state = 'queued', worker = '', lease_expires_at = NULL, "
            "attempts = MAX(0, attempts - 1)",
            (),
            hint=QUEUED_HINT,
        )

    def _if_held(
        self,
        job_id: str,
        worker: str,
        assignments: str,
        values: tuple[Any, ...],
        *,
        announce: bool = True,
        hint: str = "",
    ) -> JobRow | None:
        """Apply ``assignments`` to the job if ``worker`` holds it; the row after, else None."""
        with self._transaction() as db:
            changed = db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ? AND worker = ? AND "
                "state = 'running'",
                (*values, job_id, worker),
            ).rowcount
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if not changed or row is None:
            return None
        if announce:
            self._announce(StoreEvent("job", key=hint, job_id=job_id))
        return job_from_mapping(dict(row))


def _concept_from_row(row: sqlite3.Row) -> ConceptRow:
    values = dict(row)
    values.pop("fold", None)
    return ConceptRow(**values)


def _insert_job(db: sqlite3.Connection, row: JobRow) -> None:
    values = job_values(asdict(row))
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))
