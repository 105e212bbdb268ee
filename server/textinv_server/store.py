"""The server's durable state: one SQLite database in the data folder, for concepts and jobs.

Rows are small; the concept vectors live beside the database as content-addressed safetensors
files (``concepts/<sha256>.safetensors``), written atomically before their row is committed, so a
``kill -9`` at any point leaves either the old state or the new one. A token or a job id never
becomes a path: file names are hashes and server-made ids only.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textinv_client.choices import JobState

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


class Store:
    """Thread-safe access to the database; every write is one committed transaction."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed row survives power loss
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

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
        with self._lock:
            row = self._db.execute("SELECT * FROM concepts WHERE token = ?", (token,)).fetchone()
        return None if row is None else ConceptRow(**dict(row))

    def list_concepts(self, after: str = "", limit: int = -1) -> list[ConceptRow]:
        """Concepts ordered by token, starting after ``after``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM concepts WHERE token > ? ORDER BY token LIMIT ?", (after, limit)
            ).fetchall()
        return [ConceptRow(**dict(row)) for row in rows]

    def sha256_in_use(self, sha256: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM concepts WHERE sha256 = ?", (sha256,)).fetchone()
        return row is not None

    # --- jobs -------------------------------------------------------------------------------

    def put_job(self, row: JobRow) -> None:
        values = asdict(row)
        values["params"] = json.dumps(row.params, sort_keys=True)
        values["skip_register"] = int(row.skip_register)
        values["state"] = row.state.value
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        with self._transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO jobs ({columns}) VALUES ({marks})", tuple(values.values())
            )

    def get_job(self, job_id: str) -> JobRow | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job_from_row(row)

    def list_jobs(self, states: tuple[JobState, ...] = ()) -> list[JobRow]:
        """Jobs newest first, optionally only those in ``states``."""
        query = "SELECT * FROM jobs"
        if states:
            query += f" WHERE state IN ({', '.join('?' for _ in states)})"
        values = tuple(state.value for state in states)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at DESC, job_id", values).fetchall()
        return [_job_from_row(row) for row in rows]


def _job_from_row(row: sqlite3.Row) -> JobRow:
    values = dict(row)
    values["params"] = json.loads(values["params"])
    values["skip_register"] = bool(values["skip_register"])
    values["state"] = JobState(values["state"])
    return JobRow(**values)
