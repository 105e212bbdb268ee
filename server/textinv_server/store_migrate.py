"""``textinv store migrate``: copy one server's data folder (SQLite) into a shared store.

The move from one server to several replicas: stop the server (its data folder is locked while it
runs, so a copy can never race a write), migrate, then start replicas with ``--store``. Every
concept of every tenant is copied with its file (checked against its sha256 on the way), every
job with its images, checkpoints and log. A job that was running when its server died keeps its
state and attempts, with no lease, so the first worker to look resumes it from its newest
checkpoint. Running it again copies only what the target lacks; a token that the target holds
with other vectors is reported and left as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from textinv.errors import AlreadyExistsError, InvalidInputError
from textinv_server.job_files import IMAGES_DIR, OUT_DIR
from textinv_server.job_uploads import UploadedImage
from textinv_server.store import ConceptRow, JobRow, Store, open_store
from textinv_server.store_sqlite import SqliteStore

log = logging.getLogger(__name__)
NO_LIMIT = 2**62  # migration copies what the source holds; the source's limits admitted it


@dataclass
class MigrationReport:
    concepts: int = 0
    jobs: int = 0
    skipped: list[str] = field(default_factory=list)  # already in the target, or in conflict

    def summary(self) -> str:
        lines = [f"copied {self.concepts} concepts and {self.jobs} jobs"]
        lines += [f"  left as it is: {reason}" for reason in self.skipped]
        return "\n".join(lines)


def migrate(source: SqliteStore, target: Store) -> MigrationReport:
    """Copy every concept and job of ``source`` into ``target``."""
    report = MigrationReport()
    for row in source.all_concepts():
        _copy_concept(source, target, row, report)
    for job in reversed(source.list_jobs()):  # oldest first, as they were created
        _copy_job(source, target, job, report)
    return report


def _copy_concept(
    source: SqliteStore, target: Store, row: ConceptRow, report: MigrationReport
) -> None:
    data = source.concept_data(row)
    if hashlib.sha256(data).hexdigest() != row.sha256:
        report.skipped.append(f"concept {row.token!r} of {row.tenant}: damaged in the source")
        return
    present = target.get_concept(row.tenant, row.token)
    if present is not None:
        same = present.sha256 == row.sha256
        report.skipped.append(
            f"concept {row.token!r} of {row.tenant}: "
            + ("copied before" if same else "the target holds other vectors under this token")
        )
        return
    try:
        target.put_concept(row, data, replace=False, max_concepts=NO_LIMIT)
    except AlreadyExistsError as error:
        report.skipped.append(f"concept {row.token!r} of {row.tenant}: {error}")
        return
    report.concepts += 1


def _copy_job(source: SqliteStore, target: Store, job: JobRow, report: MigrationReport) -> None:
    if target.get_job(job.job_id) is not None:
        report.skipped.append(f"job {job.job_id}: copied before")
        return
    folder = source.files.checkout(job.job_id)
    if job.purged_at is None and (folder / IMAGES_DIR).is_dir():
        target.files.save_uploads(job.job_id, _uploads(folder / IMAGES_DIR))
    if (folder / OUT_DIR).is_dir():
        local = target.files.checkout(job.job_id)
        shutil.copytree(folder / OUT_DIR, local / OUT_DIR, dirs_exist_ok=True)
        target.files.sync(job.job_id)
        target.files.release(job.job_id)
    # No lease: the first worker to look takes a job that was running when its server died.
    target.put_job(replace(job, worker="", lease_expires_at=None))
    report.jobs += 1


def _uploads(folder: Path) -> list[UploadedImage]:
    """The saved uploads (``000.img`` and their ``000.txt`` captions), as they were uploaded."""
    uploads = []
    for path in sorted(folder.glob("*.img")):
        caption = path.with_suffix(".txt")
        text = caption.read_text(encoding="utf-8") if caption.is_file() else None
        uploads.append(UploadedImage(path.read_bytes(), path.name, text))
    return uploads


def add_store_subcommand(subparsers: argparse._SubParsersAction) -> None:
    store = subparsers.add_parser("store", help="the server's state: move it to a shared store")
    commands = store.add_subparsers(dest="store_command", required=True)
    move = commands.add_parser(
        "migrate", help="copy a stopped server's data folder into PostgreSQL"
    )
    move.add_argument("--from", dest="source", type=Path, required=True, metavar="DATA_DIR")
    move.add_argument("--to", dest="target", required=True, metavar="postgresql://...")
    move.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    if not (args.source / "textinv.db").is_file():
        raise InvalidInputError(f"--from: {str(args.source)!r} holds no textinv.db")
    if not args.target.startswith(("postgresql://", "postgres://")):
        raise InvalidInputError("--to must be a postgresql:// URL")
    source = SqliteStore(args.source / "textinv.db")  # refused while a server holds the folder
    try:
        with tempfile.TemporaryDirectory(prefix="textinv-migrate-") as scratch:
            target = open_store(args.target, Path(scratch))
            try:
                print(migrate(source, target).summary())
            finally:
                target.close()
    finally:
        source.close()
    return 0
