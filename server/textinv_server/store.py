"""The server's durable state: one SQLite database in the data folder, for concepts and jobs.

Rows are small; the concept vectors live beside the database as content-addressed safetensors
files (``concepts/<sha256>.safetensors``), written atomically before their row is committed, so a
``kill -9`` at any point leaves either the old state or the new one. A token or a job id never
becomes a path: file names are hashes and server-made ids only.

One server per data folder: opening the store takes an exclusive ``flock`` on ``textinv.lock``,
held until ``close`` (the kernel drops it when the process dies, even by ``kill -9``). With the
lock held, temporary files that a crash left behind (``.name.XXXX.tmp`` from atomic writes) are
deleted. Every write is one transaction that commits or rolls back whole; a full disk is a
``StorageFullError`` (RESOURCE_EXHAUSTED), and the connection stays usable.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from textinv.errors import DataFolderLockedError, OverloadedError, StorageFullError
from textinv_client.choices import JobState

log = logging.getLogger(__name__)

LOCK_FILE = "textinv.lock"
SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts (
    token TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    num_vectors INTEGER NOT NULL,
    width INTEGER NOT NULL,
    source_format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    job_id TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    params TEXT NOT NULL,
    num_images INTEGER NOT NULL,
    skip_register INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL,
    loss REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT NOT NULL DEFAULT '',
    registered_token TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
"""
# Columns added after version 1, each with a default that fits the rows written before it.
ADDED_JOB_COLUMNS = (
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("cancel_requested", "INTEGER NOT NULL DEFAULT 0"),
    ("concept_ready", "INTEGER NOT NULL DEFAULT 0"),
    ("purged_at", "REAL"),
)
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class ConceptRow:
    token: str
    sha256: str
    num_vectors: int
    width: int
    source_format: str
    size_bytes: int
    created_at: float  # unix seconds
    job_id: str = ""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    state: JobState
    params: dict[str, Any]  # the resolved trainer parameters, JSON-ready
    num_images: int
    skip_register: bool
    total_steps: int
    created_at: float
    step: int = 0
    loss: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    registered_token: str = ""
    attempts: int = 0  # runs started that did not stop in order (crashes, kill -9)
    cancel_requested: bool = False  # durable: a restart cancels instead of resuming
    concept_ready: bool = False  # training finished: the job's concept file can be downloaded
    purged_at: float | None = None  # when retention deleted the job's images and checkpoints


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` says the disk (or the user's quota, or SQLite's page limit) is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(error)
    return False


def disk_full_error() -> StorageFullError:
    return StorageFullError("the server's storage is full; retry after space is freed")


class Store:
    """Thread-safe access to the database; every write is one committed transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.folder = path.parent
        self._lock = threading.Lock()
        self._lock_fd = _lock_folder(self.folder)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
            self._db.executescript(SCHEMA)
            self._migrate()
        except BaseException:
            os.close(self._lock_fd)
            raise
        remove_temporary_files(self.folder)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            os.close(self._lock_fd)  # releases the folder's lock

    def _migrate(self) -> None:
        """Add the columns a database of an older version lacks; its rows keep working."""
        with self._transaction() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version >= SCHEMA_VERSION:
                return
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for name, declaration in ADDED_JOB_COLUMNS:
                if name not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {declaration}")
            # Jobs that succeeded before version 2 have their concept file.
            db.execute("UPDATE jobs SET concept_ready = 1 WHERE state = 'succeeded'")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("%s: schema version %d → %d", self.path, version, SCHEMA_VERSION)

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

    def put_concept(self, row: ConceptRow) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO concepts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(asdict(row).values()),
            )

    def delete_concept(self, token: str) -> bool:
        with self._transaction() as db:
            return db.execute("DELETE FROM concepts WHERE token = ?", (token,)).rowcount > 0

    def get_concept(self, token: str) -> ConceptRow | None:
        rows = self._read("SELECT * FROM concepts WHERE token = ?", (token,))
        return ConceptRow(**dict(rows[0])) if rows else None

    def list_concepts(self, after: str = "", limit: int = -1) -> list[ConceptRow]:
        """Concepts ordered by token, starting after ``after``."""
        rows = self._read(
            "SELECT * FROM concepts WHERE token > ? ORDER BY token LIMIT ?", (after, limit)
        )
        return [ConceptRow(**dict(row)) for row in rows]

    def sha256_in_use(self, sha256: str) -> bool:
        return bool(self._read("SELECT 1 FROM concepts WHERE sha256 = ?", (sha256,)))

    # --- jobs -------------------------------------------------------------------------------

    def add_job_allowed(self, *, max_queued: int, max_stored: int) -> None:
        """Raise ``OverloadedError`` unless a new job fits (checked again by ``add_job``)."""
        with self._lock:
            _check_job_capacity(self._db, max_queued, max_stored)

    def add_job(self, row: JobRow, *, max_queued: int, max_stored: int) -> None:
        """Insert a new job, unless ``max_queued`` jobs wait or ``max_stored`` keep files."""
        with self._transaction() as db:
            _check_job_capacity(db, max_queued, max_stored)
            _insert_job(db, row)

    def put_job(self, row: JobRow) -> None:
        with self._transaction() as db:
            _insert_job(db, row)

    def update_job(self, job_id: str, **changes: Any) -> JobRow | None:
        """Change only the named columns (never a whole-row overwrite that loses a concurrent
        change, such as a cancel request); the row after the change, ``None`` if none."""
        unknown = set(changes) - ({f.name for f in fields(JobRow)} - {"job_id"})
        if unknown:
            raise ValueError(f"not updatable job columns: {sorted(unknown)}")
        values = _job_values(changes)
        assignments = ", ".join(f"{name} = ?" for name in values)
        with self._transaction() as db:
            db.execute(
                f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), job_id)
            )
            found = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if found is None else _job_from_row(found)

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._read("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
        return _job_from_row(rows[0]) if rows else None

    def list_jobs(self, states: tuple[JobState, ...] = ()) -> list[JobRow]:
        """Jobs newest first, optionally only those in ``states``."""
        query = "SELECT * FROM jobs"
        if states:
            query += f" WHERE state IN ({', '.join('?' for _ in states)})"
        values = tuple(state.value for state in states)
        rows = self._read(query + " ORDER BY created_at DESC, job_id", values)
        return [_job_from_row(row) for row in rows]

    def job_ids(self) -> set[str]:
        return {row[0] for row in self._read("SELECT job_id FROM jobs")}

    def count_jobs(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, zeros included)."""
        counts = dict.fromkeys(JobState, 0)
        for state, count in self._read("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[JobState(state)] = int(count)
        return counts

    def finished_before(self, finished_at: float) -> list[JobRow]:
        """Terminal jobs that finished before ``finished_at`` and still keep their files."""
        rows = self._read(
            "SELECT * FROM jobs WHERE purged_at IS NULL AND finished_at IS NOT NULL "
            "AND finished_at < ? ORDER BY finished_at",
            (finished_at,),
        )
        return [_job_from_row(row) for row in rows]


def _check_job_capacity(db: sqlite3.Connection, max_queued: int, max_stored: int) -> None:
    queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    if queued >= max_queued:
        raise OverloadedError(f"{queued} inversion jobs are waiting already; retry later")
    stored = db.execute("SELECT COUNT(*) FROM jobs WHERE purged_at IS NULL").fetchone()[0]
    if stored >= max_stored:
        raise OverloadedError(
            f"the server stores {stored} inversion jobs, its limit; retry once older jobs "
            "pass their retention period"
        )


def _job_values(values: dict[str, Any]) -> dict[str, Any]:
    """``JobRow`` values as SQLite stores them: JSON params, int flags, state names."""
    stored = dict(values)
    if "params" in stored:
        stored["params"] = json.dumps(stored["params"], sort_keys=True)
    for name in ("skip_register", "cancel_requested", "concept_ready"):
        if name in stored:
            stored[name] = int(stored[name])
    if "state" in stored:
        stored["state"] = JobState(stored["state"]).value
    return stored


def _insert_job(db: sqlite3.Connection, row: JobRow) -> None:
    values = _job_values(asdict(row))
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    db.execute(f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({marks})", tuple(values.values()))


def _job_from_row(row: sqlite3.Row) -> JobRow:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    for name in ("skip_register", "cancel_requested", "concept_ready"):
        values[name] = bool(values[name])
    values["state"] = JobState(values["state"])
    return JobRow(**values)


def _lock_folder(folder: Path) -> int:
    """An exclusive ``flock`` on the folder's lock file; refused at once if another holds it."""
    path = folder / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise DataFolderLockedError(
            f"the data folder {str(folder)!r} is in use by another textinv server (it holds "
            f"{LOCK_FILE}); stop that server or choose another --data folder"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())  # who holds it, for a person looking
    return descriptor


def remove_temporary_files(folder: Path) -> list[Path]:
    """Delete what an interrupted atomic write left (``.name.XXXX.tmp``); the paths deleted."""
    removed = [path for path in folder.rglob(".*.tmp") if path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
        log.warning("removed %s, a temporary file an interrupted write left", path)
    return removed
