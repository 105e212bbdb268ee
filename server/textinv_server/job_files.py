"""A job's folder on disk (``DATA/jobs/<job id>/``): its size, its checkpoints, its clean-up.

``images/`` holds the uploads, ``out/`` the trainer's run folder (checkpoints, validation grids,
step log and the learned concept). Only the concept file outlives the retention period.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Collection
from pathlib import Path

from textinv.errors import StorageFullError
from textinv.trainer import CONCEPT_FILE
from textinv.trainer.run_files import list_checkpoints

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
