"""Jobs' files in PostgreSQL (``job_files``: job id, path, bytes), for workers on any machine.

Paths are server-made and relative to the job's folder: ``images/000.img`` for the uploads,
``out/...`` for the trainer's run folder. The trainer works in a local copy,
``SCRATCH/<job id>/`` (``checkout``, rebuilt from the rows each time); ``sync`` writes back what
changed under ``out/`` and deletes the rows of files that are gone (pruned checkpoints), in one
transaction, so another worker's ``checkout`` always sees one consistent checkpoint set.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import psycopg

from textinv.trainer import CHECKPOINT_DIR, CONCEPT_FILE
from textinv_server.job_files import IMAGES_DIR, OUT_DIR, purge_job_files
from textinv_server.store import LeaseLostError

if TYPE_CHECKING:
    from textinv_server.job_uploads import UploadedImage

log = logging.getLogger(__name__)

Transaction = Callable[[], AbstractContextManager[psycopg.Connection]]
# Files of a job with no row are orphans only once older than this: a replica saves a job's
# uploads just before it commits the job's row, and another may look in between.
ORPHAN_AGE = "1 hour"
_CONCEPT_PATH = f"{OUT_DIR}/{CONCEPT_FILE}"
_CHECKPOINTS = f"{OUT_DIR}/{CHECKPOINT_DIR}/"


def stored_path(path: str) -> PurePosixPath:
    """A stored path, refused unless it stays inside the job's folder."""
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in path:
        raise ValueError(f"refused a job file path outside the job's folder: {path!r}")
    return pure


def local_files(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``folder`` as ``prefix/relative/path`` → bytes."""
    if not folder.is_dir():
        return {}
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}": path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


class PostgresJobFiles:
    """``JobFiles`` on the ``job_files`` table, with local copies under ``scratch``."""

    def __init__(self, transaction: Transaction, scratch: Path) -> None:
        self._transaction = transaction
        self.scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)

    def _local(self, job_id: str) -> Path:
        if len(stored_path(job_id).parts) != 1:
            raise ValueError(f"refused a job id that is not one folder name: {job_id!r}")
        return self.scratch / job_id

    def save_uploads(self, job_id: str, images: Sequence[UploadedImage]) -> None:
        from textinv_server.job_uploads import save_images

        # Written to a folder first: save_images checks each image by decoding its file.
        folder = Path(tempfile.mkdtemp(prefix=".uploads-", dir=self.scratch))
        try:
            save_images(folder / IMAGES_DIR, images)
            files = local_files(folder / IMAGES_DIR, IMAGES_DIR)
            with self._transaction() as conn, conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO job_files (job_id, path, data) VALUES (%s, %s, %s) "
                    "ON CONFLICT (job_id, path) DO UPDATE SET data = EXCLUDED.data",
                    [(job_id, path, data) for path, data in files.items()],
                )
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def checkout(self, job_id: str) -> Path:
        folder = self._local(job_id)
        shutil.rmtree(folder, ignore_errors=True)  # fresh each time: the store's copy wins
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT path, data FROM job_files WHERE job_id = %s", (job_id,)
            ).fetchall()
        for path, data in rows:
            target = folder.joinpath(*stored_path(path).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        (folder / OUT_DIR).mkdir(parents=True, exist_ok=True)
        return folder

    def sync(self, job_id: str, holder: str = "") -> None:
        files = local_files(self._local(job_id) / OUT_DIR, OUT_DIR)
        with self._transaction() as conn:
            if (
                holder
                and not conn.execute(  # the row lock orders this against a takeover
                    "SELECT 1 FROM jobs WHERE job_id = %s AND worker = %s AND state = 'running' "
                    "FOR UPDATE",
                    (job_id, holder),
                ).fetchone()
            ):
                raise LeaseLostError(f"job {job_id}: its lease is held by another worker")
            stored: dict[str, bytes] = dict(
                conn.execute(
                    "SELECT path, sha256(data) FROM job_files WHERE job_id = %s AND "
                    "starts_with(path, %s) FOR UPDATE",
                    (job_id, f"{OUT_DIR}/"),
                ).fetchall()
            )
            changed = [
                (job_id, path, data)
                for path, data in files.items()
                if stored.get(path) != hashlib.sha256(data).digest()
            ]
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO job_files (job_id, path, data) VALUES (%s, %s, %s) "
                    "ON CONFLICT (job_id, path) DO UPDATE SET data = EXCLUDED.data, "
                    "saved_at = now()",
                    changed,
                )
            gone = [path for path in stored if path not in files]
            conn.execute(
                "DELETE FROM job_files WHERE job_id = %s AND path = ANY(%s)", (job_id, gone)
            )

    def release(self, job_id: str) -> None:
        shutil.rmtree(self._local(job_id), ignore_errors=True)

    def delete(self, job_id: str) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM job_files WHERE job_id = %s", (job_id,))
        self.release(job_id)

    def concept_file(self, job_id: str) -> bytes | None:
        with self._transaction() as conn:
            found = conn.execute(
                "SELECT data FROM job_files WHERE job_id = %s AND path = %s",
                (job_id, _CONCEPT_PATH),
            ).fetchone()
        return None if found is None else bytes(found[0])

    def discard_checkpoints(self, job_id: str) -> None:
        # The local copy's too, or a later sync of this checkout would store them again.
        shutil.rmtree(self._local(job_id) / OUT_DIR / CHECKPOINT_DIR, ignore_errors=True)
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM job_files WHERE job_id = %s AND starts_with(path, %s)",
                (job_id, _CHECKPOINTS),
            )

    def purge(self, job_id: str) -> None:
        purge_job_files(self._local(job_id))
        with self._transaction() as conn:
            conn.execute(
                "DELETE FROM job_files WHERE job_id = %s AND path <> %s", (job_id, _CONCEPT_PATH)
            )

    def remove_orphans(self, job_ids: Collection[str]) -> list[str]:
        with self._transaction() as conn:
            rows = conn.execute(
                "DELETE FROM job_files AS f WHERE NOT (job_id = ANY(%s)) AND saved_at < now() - "
                "%s::interval AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.job_id = f.job_id) "
                "RETURNING job_id",
                (list(job_ids), ORPHAN_AGE),
            ).fetchall()
        removed = sorted({row[0] for row in rows})
        for job_id in removed:
            log.warning("removed the stored files of job %s: no job row names it", job_id)
        for path in self.scratch.iterdir():  # local copies a crash left (uploads in progress aside)
            if path.is_dir() and not path.name.startswith(".") and path.name not in job_ids:
                shutil.rmtree(path, ignore_errors=True)
        return removed
