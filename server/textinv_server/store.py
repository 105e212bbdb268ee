"""The server's durable state behind one interface, with two implementations.

``SqliteStore`` (``store_sqlite``) is the embedded default: one SQLite file and the data folder,
owned by one server process. ``PostgresStore`` (``store_postgres``) keeps the same state in
PostgreSQL, shared by any number of ``textinv serve`` replicas and ``textinv worker`` processes,
which then hold nothing that another replica could not rebuild. ``open_store`` picks one from
``--store``.

What lives here: concepts (their rows and their safetensors bytes, kilobytes each), jobs (rows,
uploaded images, the trainer's checkpoints and log), and the leases by which workers hold jobs.
Every write is one transaction that commits or rolls back whole. Rules that must hold across
replicas are checked inside that transaction, never before it in a replica's memory: a token is
unique per tenant up to case and Unicode form (``fold``), a tenant holds at most ``max_concepts``,
a job's request id names at most one job of its tenant, and one worker at a time holds a job.

Changes are announced to every process that shares the store (``subscribe``): PostgreSQL's
``LISTEN``/``NOTIFY`` there, an in-process call for SQLite. Replicas use them to drop what they
cached; anything they do not know they look up.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from textinv.errors import AlreadyExistsError, OverloadedError, StorageFullError, TextInvError
from textinv_client.choices import JobState

if TYPE_CHECKING:
    from textinv_server.job_uploads import UploadedImage

DEFAULT_TENANT = "default"
# How long a worker's claim on a job lasts without renewal; a dead worker's job is taken over by
# another worker once its lease has run out. Workers renew every LEASE_S / 3.
DEFAULT_LEASE_S = 30.0
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class ConceptRow:
    token: str
    sha256: str  # of the stored diffusers-format safetensors file
    num_vectors: int
    width: int
    source_format: str
    size_bytes: int
    created_at: float  # unix seconds
    job_id: str = ""
    tenant: str = DEFAULT_TENANT


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
    tenant: str = DEFAULT_TENANT
    request_id: str = ""  # the client's idempotency key ("" without one)
    worker: str = ""  # the worker holding the job's lease ("" when none does)
    lease_expires_at: float | None = None  # unix seconds; past it another worker may take it
    progress: dict[str, Any] | None = None  # the latest JobProgress, for watchers elsewhere


@dataclass(frozen=True)
class StoreEvent:
    """A change another process may have cached. ``kind`` is ``concept`` (``tenant``, ``key``: the
    folded token), ``job`` (``job_id``; ``key`` is ``CANCEL_HINT`` when the change requested the
    job's cancel, so its worker stops without reading the row) or ``reset``: changes may have
    been missed (a listener reconnected), so drop everything cached."""

    kind: str
    tenant: str = ""
    key: str = ""
    job_id: str = ""


Listener = Callable[[StoreEvent], None]
CANCEL_HINT = "cancel"  # a job event's key: the change requested the job's cancel
QUEUED_HINT = "queued"  # a job event's key: a job became claimable (created, given back)


class JobFiles(Protocol):
    """A job's files: its uploads, and the trainer's run folder (checkpoints, log, concept).

    The trainer works in a local folder (``checkout``); ``sync`` saves what it wrote where every
    worker can read it, so that another worker's ``checkout`` resumes from the newest checkpoint.
    """

    def save_uploads(self, job_id: str, images: Sequence[UploadedImage]) -> None:
        """Save and check the uploads (``job_uploads.save_images``) before the job's row."""
        ...

    def checkout(self, job_id: str) -> Path:
        """A local folder with ``images/`` and ``out/`` (as last synced) for the trainer."""
        ...

    def sync(self, job_id: str, holder: str = "") -> None:
        """Save the checked-out ``out/`` folder (after a checkpoint was written). With a
        ``holder``, only while that worker holds the job's lease, else ``LeaseLostError``."""
        ...

    def release(self, job_id: str) -> None:
        """This worker is done with the job for now: drop its local copy (if it is a copy)."""
        ...

    def delete(self, job_id: str) -> None:
        """Every file of the job (its creation failed before the row was committed)."""
        ...

    def concept_file(self, job_id: str) -> bytes | None: ...

    def discard_checkpoints(self, job_id: str) -> None: ...

    def purge(self, job_id: str) -> None:
        """Delete everything but the learned concept (retention)."""
        ...

    def remove_orphans(self, job_ids: Collection[str]) -> list[str]:
        """Delete the files of jobs that have no row (a crash between upload and commit)."""
        ...


class Store(Protocol):
    """What the registry, the job manager and the workers need; see the module docstring."""

    kind: str  # "sqlite" or "postgresql", reported by GetServerInfo
    shared: bool  # other processes write it too (their changes arrive as announcements)

    @property
    def files(self) -> JobFiles: ...

    def close(self) -> None: ...

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener`` (on a store thread; it must be quick) for every change, from any
        process that shares the store, this one's included."""
        ...

    # --- concepts ---------------------------------------------------------------------------

    def put_concept(
        self, row: ConceptRow, data: bytes, *, replace: bool, max_concepts: int
    ) -> ConceptRow | None:
        """Store ``row`` and its file; the row it replaced, if any. Raises ``AlreadyExistsError``
        when the token (or one that folds alike) exists and ``replace`` is false, or a look-alike
        holds the fold; ``OverloadedError`` past ``max_concepts`` for the tenant."""
        ...

    def delete_concept(self, tenant: str, token: str) -> ConceptRow | None: ...

    def get_concept(self, tenant: str, token: str) -> ConceptRow | None: ...

    def find_concepts(self, tenant: str, keys: Collection[str]) -> list[ConceptRow]:
        """The tenant's concepts whose folded token is one of ``keys`` (one indexed query)."""
        ...

    def concept_data(self, row: ConceptRow) -> bytes:
        """The stored file of ``row``; ``ConceptFileError`` if it is missing."""
        ...

    def list_concepts(self, tenant: str, after: str = "", limit: int = -1) -> list[ConceptRow]:
        """The tenant's concepts ordered by token, starting after ``after``."""
        ...

    def count_concepts(self, tenant: str) -> int: ...

    def damaged_concepts(self) -> list[tuple[ConceptRow, str]]:
        """Stored concepts whose file is missing or does not match its sha256, and why: checked
        at start where files can change behind the store's back (a data folder); else []."""
        ...

    # --- jobs -------------------------------------------------------------------------------

    def add_job_allowed(self, *, max_queued: int, max_stored: int) -> None: ...

    def add_job(self, row: JobRow, *, max_queued: int, max_stored: int) -> JobRow:
        """Insert a new job (capacity checked again inside the transaction). When ``row`` has a
        request id that an earlier job of its tenant has, nothing is inserted and that job is
        returned: a retried create gets the job the first call made."""
        ...

    def find_job_by_request(self, tenant: str, request_id: str) -> JobRow | None: ...

    def put_job(self, row: JobRow) -> None: ...

    def update_job(self, job_id: str, holder: str | None = None, **changes: Any) -> JobRow | None:
        """Change only the named columns; the row after the change, ``None`` if none (or, with a
        ``holder``, if that worker no longer holds the running job: it lost its lease)."""
        ...

    def get_job(self, job_id: str) -> JobRow | None: ...

    def list_jobs(
        self, states: tuple[JobState, ...] = (), tenant: str | None = None
    ) -> list[JobRow]:
        """Jobs newest first, optionally only those in ``states`` / of ``tenant``."""
        ...

    def job_ids(self) -> set[str]: ...

    def count_jobs(self) -> dict[JobState, int]: ...

    def finished_before(self, finished_at: float) -> list[JobRow]: ...

    # --- leases -----------------------------------------------------------------------------

    def claim_job(self, worker: str, lease_s: float) -> JobRow | None:
        """Take the oldest job that is queued, or running under an expired lease (its worker
        died), for ``worker``: it becomes RUNNING with a lease of ``lease_s`` and one more
        attempt. ``None`` when there is none. Two workers never get the same job."""
        ...

    def renew_lease(self, job_id: str, worker: str, lease_s: float) -> JobRow | None:
        """Extend ``worker``'s lease; the row, or ``None`` when the worker lost the job."""
        ...

    def release_job(self, job_id: str, worker: str) -> JobRow | None:
        """Give a running job back (an orderly stop): QUEUED again, its attempt returned."""
        ...


class LeaseLostError(TextInvError):
    """The worker's lease on a job went to another worker: this one must stop writing."""


def replica_id() -> str:
    """This process, as leases and GetServerInfo name it: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


# --- the refusals both stores raise, worded once ---------------------------------------------


def duplicate_concept_error(token: str) -> AlreadyExistsError:
    return AlreadyExistsError(f"concept {token!r} is already registered; delete it or set replace")


def look_alike_error(token: str, other: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"concept {token!r} would match the same prompt words as the registered {other!r} "
        "(tokens match case-insensitively); delete that one first"
    )


def too_many_concepts_error(max_concepts: int) -> OverloadedError:
    return OverloadedError(
        f"the server holds {max_concepts} concepts of this tenant, its limit; delete one first"
    )


def job_capacity_error(queued: int, stored: int, max_queued: int, max_stored: int) -> None:
    """Raise ``OverloadedError`` when ``queued`` or ``stored`` jobs are at their limit."""
    if queued >= max_queued:
        raise OverloadedError(f"{queued} inversion jobs are waiting already; retry later")
    if stored >= max_stored:
        raise OverloadedError(
            f"the server stores {stored} inversion jobs, its limit; retry once older jobs "
            "pass their retention period"
        )


def open_store(url: str, data_dir: Path) -> Store:
    """``sqlite`` (or ""): the data folder's SQLite file; ``postgresql://...``: PostgreSQL, with
    ``data_dir`` as scratch space for the jobs this process trains."""
    if url in ("", "sqlite"):
        from textinv_server.store_sqlite import SqliteStore

        return SqliteStore(data_dir / "textinv.db")
    if url.startswith(("postgresql://", "postgres://")):
        from textinv_server.store_postgres import PostgresStore

        return PostgresStore(url, scratch=data_dir / "scratch")
    from textinv.errors import InvalidInputError

    raise InvalidInputError(
        "--store (or $TEXTINV_STORE) must be 'sqlite' or a postgresql://USER@HOST/DB URL"
    )
