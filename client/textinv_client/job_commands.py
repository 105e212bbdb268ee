"""``jobs submit|watch|ls|cancel``: run inversion jobs on a server.

``jobs submit`` takes the trainer's flags, which are :class:`InversionParams`' fields (named as
``textinv invert`` names them), and the training images with their captions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from textinv_client.command_support import (
    EXIT_OK,
    SubParsers,
    add_command,
    format_time,
    print_listing,
    reports_errors,
)
from textinv_client.connection_flags import client_from_args
from textinv_client.flags import add_flags, from_flags
from textinv_client.job_progress import describe_job, watch_until_done
from textinv_client.types import InversionParams, JobState, TrainingImage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def find_training_images(paths: Sequence[Path]) -> list[TrainingImage]:
    """Image files (folders expand to the images inside), each with NAME.txt as its caption."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"no such image file or folder: {str(path)!r}")
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {[str(p) for p in paths]}")
    return [_training_image(file) for file in files]


def _training_image(file: Path) -> TrainingImage:
    caption_file = file.with_suffix(".txt")
    caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else None
    return TrainingImage(data=file.read_bytes(), filename=file.name, caption=caption)


def inversion_params_from_args(args: argparse.Namespace) -> InversionParams:
    """The parameters the trainer's flags describe; ValueError names a bad value."""
    return from_flags(InversionParams, args)


@reports_errors
def jobs_submit(args: argparse.Namespace) -> int:
    params = inversion_params_from_args(args)
    images = find_training_images(args.images)
    with client_from_args(args) as textinv:
        job = textinv.create_inversion_job(
            images, params, register_on_success=not args.no_register, request_id=args.request_id
        )
        print(f"submitted job {job.job_id} ({len(images)} images, token {params.token})")
        return watch_until_done(textinv, job.job_id) if args.watch else EXIT_OK


@reports_errors
def jobs_watch(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        return watch_until_done(textinv, args.job_id)


@reports_errors
def jobs_ls(args: argparse.Namespace) -> int:
    states = [JobState(state) for state in args.state or ()]
    with client_from_args(args) as textinv:
        jobs = textinv.list_jobs(states=states)
    print_listing(
        jobs,
        as_json=args.json,
        header=("JOB", "TOKEN", "STATE", "STEP", "LOSS", "CREATED"),
        row=lambda job: (
            job.job_id,
            job.params.token if job.params else "?",
            job.state.value,
            f"{job.step}/{job.total_steps}",
            "-" if job.loss is None else f"{job.loss:.4f}",
            format_time(job.created_at),
        ),
    )
    return EXIT_OK


@reports_errors
def jobs_cancel(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        job = textinv.cancel_job(args.job_id)
    print(describe_job(job))
    return EXIT_OK


def _add_submit_command(commands: SubParsers) -> None:
    submit = add_command(commands, "submit", jobs_submit, "learn a concept from images")
    submit.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        help="image files or folders of them; NAME.txt beside NAME.png is its caption ('{}' "
        "marks the token)",
    )
    add_flags(submit, InversionParams, required=["token", "init_text"])
    submit.add_argument(
        "--no-register", action="store_true", help="do not register the concept on success"
    )
    submit.add_argument("--watch", action="store_true", help="follow the job until it finishes")
    submit.add_argument(
        "--request-id",
        metavar="KEY",
        help="idempotency key (at most 64 printable ASCII characters): submitting the same key "
        "again returns the job it started instead of a new one (default: a random key)",
    )


def add_jobs_commands(subparsers: SubParsers) -> None:
    jobs = subparsers.add_parser("jobs", help="run inversion jobs on a server")
    commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    _add_submit_command(commands)

    watch = add_command(commands, "watch", jobs_watch, "follow a job with a progress bar")
    watch.add_argument("job_id")

    ls = add_command(commands, "ls", jobs_ls, "list jobs, newest first")
    ls.add_argument(
        "--state", action="append", choices=[s.value for s in JobState], help="repeatable"
    )
    ls.add_argument("--json", action="store_true", help="print JSON")

    cancel = add_command(commands, "cancel", jobs_cancel, "cancel a job")
    cancel.add_argument("job_id")
