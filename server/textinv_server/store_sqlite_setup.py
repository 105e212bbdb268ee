"""The embedded store's files and schema: the folder's lock, the tables and their migrations,
and the content-addressed concept files (``concepts/<sha256>.safetensors``)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import sqlite3
from pathlib import Path

from textinv.concept_table import fold
from textinv.errors import ConceptFileError, DataFolderLockedError
from textinv.fileio import atomic_write_bytes
from textinv_server.store import JobRow, disk_full_error, is_disk_full, job_capacity_error
from textinv_server.store_rows import job_from_mapping

log = logging.getLogger(__name__)

LOCK_FILE = "textinv.lock"
SCHEMA_VERSION = 3
# Version 3: tenants (concepts keyed by tenant and token), request ids, leases, progress.
SCHEMA = """
CREATE TABLE IF NOT EXISTS concepts (
    tenant TEXT NOT NULL,
    token TEXT NOT NULL,
    fold TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    num_vectors INTEGER NOT NULL,
    width INTEGER NOT NULL,
    source_format TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL,
    job_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, token)
);
CREATE INDEX IF NOT EXISTS concepts_by_fold ON concepts (tenant, fold);
CREATE INDEX IF NOT EXISTS concepts_by_sha256 ON concepts (sha256);
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
    ("tenant", "TEXT NOT NULL DEFAULT 'default'"),
    ("request_id", "TEXT NOT NULL DEFAULT ''"),
    ("worker", "TEXT NOT NULL DEFAULT ''"),
    ("lease_expires_at", "REAL"),
    ("progress", "TEXT"),
)
# Version 2's concepts table (token the only key), rebuilt as version 3's on migration.
_CONCEPTS_V3_COPY = """
ALTER TABLE concepts RENAME TO concepts_v2;
{schema}
INSERT INTO concepts (tenant, token, fold, sha256, num_vectors, width, source_format, size_bytes,
                      created_at, job_id)
    SELECT 'default', token, '', sha256, num_vectors, width, source_format, size_bytes,
           created_at, job_id FROM concepts_v2;
DROP TABLE concepts_v2;
"""


def migrate(db: sqlite3.Connection, db_name: str) -> None:
    """Bring a database of an older version to this one, inside the caller's transaction; its
    rows keep working."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    script = _CONCEPTS_V3_COPY.format(schema=SCHEMA) if "concepts" in tables else SCHEMA
    # One statement at a time: ``executescript`` would commit this transaction first.
    for statement in filter(str.strip, script.split(";")):
        db.execute(statement)
    present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
    for column, declaration in ADDED_JOB_COLUMNS:
        if column not in present:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
    for (token,) in db.execute("SELECT token FROM concepts WHERE fold = ''").fetchall():
        db.execute("UPDATE concepts SET fold = ? WHERE token = ?", (fold(token), token))
    if version < 2:  # jobs that succeeded before version 2 have their concept file
        db.execute("UPDATE jobs SET concept_ready = 1 WHERE state = 'succeeded'")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    log.info("%s: schema version %d → %d", db_name, version, SCHEMA_VERSION)


def lock_folder(folder: Path) -> int:
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


_CONCEPT_FILE = re.compile(r"[0-9a-f]{64}\.safetensors")


class ConceptFiles:
    """Concept files named by their sha256; messages name the file, never the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, sha256: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self.folder / f"{sha256}.safetensors", data)
        except OSError as error:  # a full disk is RESOURCE_EXHAUSTED, never a path in a reply
            if is_disk_full(error):
                raise disk_full_error() from error
            raise

    def read(self, sha256: str) -> bytes:
        name = f"{sha256}.safetensors"
        try:
            return (self.folder / name).read_bytes()
        except OSError as error:
            raise ConceptFileError(f"{name}: cannot be read ({error.strerror})") from None

    def damage(self, sha256: str) -> str:
        """Why the file of ``sha256`` is unusable ("" when it is intact)."""
        try:
            data = self.read(sha256)
        except ConceptFileError as error:
            return str(error)
        if hashlib.sha256(data).hexdigest() != sha256:
            return f"{sha256}.safetensors: its content does not match its sha256"
        return ""

    def delete(self, sha256: str) -> None:
        (self.folder / f"{sha256}.safetensors").unlink(missing_ok=True)

    def remove_orphans(self, referenced: set[str]) -> None:
        """Concept files no row names (a crash between the file and its row)."""
        for path in self.folder.iterdir():
            if _CONCEPT_FILE.fullmatch(path.name) and path.stem not in referenced:
                log.warning("removing %s: no stored concept uses it", path.name)
                path.unlink(missing_ok=True)


# --- job rows, inside a caller's transaction -----------------------------------------------


def check_job_capacity(db: sqlite3.Connection, max_queued: int, max_stored: int) -> None:
    queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
    stored = db.execute("SELECT COUNT(*) FROM jobs WHERE purged_at IS NULL").fetchone()[0]
    job_capacity_error(queued, stored, max_queued, max_stored)


def job_by_request(db: sqlite3.Connection, tenant: str, request_id: str) -> JobRow | None:
    if not request_id:
        return None
    found = db.execute(
        "SELECT * FROM jobs WHERE tenant = ? AND request_id = ?", (tenant, request_id)
    ).fetchone()
    return None if found is None else job_from_mapping(dict(found))
