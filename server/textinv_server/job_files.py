"""A job's folder on disk (``DATA/jobs/<job id>/``): its size, its checkpoints, its clean-up.

``images/`` holds the uploads, ``out/`` the trainer's run folder (checkpoints, validation grids,
step log and the learned concept). Only the concept file outlives the retention period.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from textinv.errors import StorageFullError
from textinv.trainer import CHECKPOINT_DIR, CONCEPT_FILE
from textinv.trainer.run_files import list_checkpoints

if TYPE_CHECKING:
    from textinv_server.job_uploads import UploadedImage

log = logging.getLogger(__name__)

IMAGES_DIR = "images"
OUT_DIR = "out"
KEEP_CHECKPOINTS = 2  # the newest one resumes; the one before is a spare


def folder_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder`` (0 when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prune_checkpoints(out: Path, keep: int = KEEP_CHECKPOINTS) -> None:
    """Delete all but the newest ``keep`` checkpoints of the run folder ``out``."""
    for path in list_checkpoints(out)[:-keep]:
        path.unlink(missing_ok=True)


def purge_job_files(job_folder: Path) -> None:
    """Delete a finished job's files except its learned concept (small, and still offered)."""
    shutil.rmtree(job_folder / IMAGES_DIR, ignore_errors=True)
    out = job_folder / OUT_DIR
    if out.is_dir():
        for path in out.iterdir():
            if path.name == CONCEPT_FILE:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def remove_orphan_folders(jobs_folder: Path, job_ids: Collection[str]) -> list[str]:
    """Delete job folders that have no row (a crash between saving uploads and committing)."""
    if not jobs_folder.is_dir():
        return []
    orphans = [p for p in jobs_folder.iterdir() if p.is_dir() and p.name not in job_ids]
    for path in orphans:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed job folder %s: no job row names it", path.name)
    return [path.name for path in orphans]


def check_job_bytes(job_folder: Path, limit: int) -> None:
    """After the trainer wrote a checkpoint or a grid: old checkpoints go, and a job that stores
    more than ``limit`` bytes is refused (raised from the trainer's callback, it ends the run)."""
    prune_checkpoints(job_folder / OUT_DIR)
    stored = folder_bytes(job_folder)
    if stored > limit:
        raise StorageFullError(
            f"the job stores {stored} bytes (uploads, checkpoints and validation images); "
            f"the limit per job is {limit} bytes"
        )


class FolderJobFiles:
    """The embedded store's job files: ``jobs/<job id>/`` in the data folder, where the trainer
    writes directly (so ``sync`` and ``release`` have nothing to do)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save_uploads(self, job_id: str, images: Sequence[UploadedImage]) -> None:
        from textinv_server.job_uploads import save_images

        try:
            save_images(self.checkout(job_id) / IMAGES_DIR, images)
        except BaseException:
            self.delete(job_id)
            raise

    def checkout(self, job_id: str) -> Path:
        return self.folder / job_id

    def sync(self, job_id: str, holder: str = "") -> None:
        return None  # the trainer wrote into the store's own folder

    def release(self, job_id: str) -> None:
        return None

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def concept_file(self, job_id: str) -> bytes | None:
        path = self.folder / job_id / OUT_DIR / CONCEPT_FILE
        return path.read_bytes() if path.is_file() else None

    def discard_checkpoints(self, job_id: str) -> None:
        shutil.rmtree(self.folder / job_id / OUT_DIR / CHECKPOINT_DIR, ignore_errors=True)

    def purge(self, job_id: str) -> None:
        purge_job_files(self.folder / job_id)

    def remove_orphans(self, job_ids: Collection[str]) -> list[str]:
        return remove_orphan_folders(self.folder, job_ids)
