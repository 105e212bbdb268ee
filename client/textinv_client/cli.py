"""Command line over the textinv client: remote generate, concepts and jobs.

The ``textinv`` command is composed in textinv/cli.py, which calls
:func:`add_remote_subcommands` and :func:`add_generation_arguments` and dispatches with
``args.func(args)``. Every handler returns an exit code: 0 on success, 1 when the server or the
network fails, 2 for bad input (including the server's INVALID_ARGUMENT). Errors print one line,
``error: ...``, on stderr. ``textinv-client`` (or ``python -m textinv_client``) runs the same
commands without textinv's other subcommands, and without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from textinv_client.channel import DEFAULT_TIMEOUT_S
from textinv_client.errors import InvalidArgument, TextInvError
from textinv_client.sync_client import TextInvClient
from textinv_client.types import (
    MAX_SEED,
    ConceptInfo,
    ConceptProperty,
    GenerateRequest,
    GenerateResult,
    InversionParams,
    JobInfo,
    JobProgress,
    JobState,
    LrSchedule,
    Precision,
    Scheduler,
    TrainingImage,
)

API_KEY_ENV = "TEXTINV_API_KEY"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]


class SubParsers(Protocol):
    """What argparse's ``add_subparsers()`` returns (its class is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


# -- argument types -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2**64-1, got {value}")
    return value


def size_int(text: str) -> int:
    value = int(text)
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8, got {value}")
    return value


def png_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"must end in .png, got {text!r}")
    return path


# -- shared flags ---------------------------------------------------------------------------------


def add_connection_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Declare --server, --api-key, --tls*, --timeout (``required``: is --server mandatory)."""
    group = parser.add_argument_group("server connection")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        required=required,
        help="address of the textinv server" + ("" if required else " (omit to run locally)"),
    )
    group.add_argument(
        "--api-key",
        default=None,
        help=f"API key sent as 'authorization: Bearer KEY' (default: ${API_KEY_ENV})",
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system's trusted roots")
    group.add_argument("--tls-ca", type=Path, help="PEM file of the CA that signed the server")
    group.add_argument("--tls-cert", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--tls-key", type=Path, help="client private key (PEM) for mutual TLS")
    group.add_argument(
        "--timeout", type=positive_float, default=None, help="deadline of each call, in seconds"
    )


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the generation flags shared by local and remote ``generate``."""
    parser.add_argument("--prompt", required=True, help='e.g. "a photo of <cat-toy> on a beach"')
    parser.add_argument("--negative-prompt", default="", help="what to steer away from")
    parser.add_argument("--steps", type=positive_int, default=30, help="denoising steps (30)")
    parser.add_argument(
        "--guidance",
        type=non_negative_float,
        default=7.5,
        help="classifier-free guidance scale; 1 turns guidance off (7.5)",
    )
    parser.add_argument(
        "--scheduler",
        choices=[scheduler.value for scheduler in Scheduler],
        default=Scheduler.DDIM.value,
        help="noise scheduler (ddim: deterministic and good at 30 steps on every backend)",
    )
    parser.add_argument(
        "--seed",
        type=seed_int,
        default=None,
        help="seed of the first image; image i uses SEED+i (default: random, and printed)",
    )
    parser.add_argument(
        "--width", type=size_int, default=None, help="multiple of 8 (default: model's native)"
    )
    parser.add_argument(
        "--height", type=size_int, default=None, help="multiple of 8 (default: model's native)"
    )
    parser.add_argument("--num-images", type=positive_int, default=1, help="images to draw (1)")
    parser.add_argument(
        "--out",
        type=png_path,
        required=True,
        metavar="PATH.png",
        help="where to write the image; with --num-images N > 1, numbered files "
        "PATH-0.png ... PATH-{N-1}.png are written instead",
    )


def numbered_output_paths(out: Path, count: int) -> list[Path]:
    """``out`` itself for one image; ``PATH-0.png``, ``PATH-1.png``, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(count)]


def generate_request_from_args(args: argparse.Namespace) -> GenerateRequest:
    """The request that the generation flags describe; ValueError names a bad value."""
    return GenerateRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        width=args.width,
        height=args.height,
        num_images=args.num_images,
        scheduler=Scheduler(args.scheduler),
    )


def client_from_args(args: argparse.Namespace) -> TextInvClient:
    """A client for the connection flags; the API key falls back to $TEXTINV_API_KEY.

    Only ``args.server`` is required, so a composed command that declares fewer of the flags
    (rather than calling :func:`add_connection_arguments`) still works.
    """
    timeout = getattr(args, "timeout", None)
    api_key = getattr(args, "api_key", None) or os.environ.get(API_KEY_ENV) or None
    return TextInvClient(
        args.server,
        api_key=api_key,
        tls=getattr(args, "tls", False),
        root_certificates=getattr(args, "tls_ca", None),
        client_certificate=getattr(args, "tls_cert", None),
        client_key=getattr(args, "tls_key", None),
        timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout,
    )


# -- error handling -------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def reports_errors(handler: Handler) -> Handler:
    """Turn the errors a command can meet into one ``error:`` line and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except InvalidArgument as error:
            return fail(error.message or str(error), EXIT_USAGE)
        except TextInvError as error:
            return fail(f"{error.code.name.lower()}: {error.message}")
        except ValueError as error:
            return fail(str(error), EXIT_USAGE)
        except OSError as error:
            return fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
        except KeyboardInterrupt:
            return fail("interrupted", 130)

    return run


# -- generate -------------------------------------------------------------------------------------


def write_images(result: GenerateResult, out: Path) -> list[Path]:
    paths = numbered_output_paths(out, len(result.images))
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, png in zip(paths, result.images, strict=True):
        path.write_bytes(png)
    return paths


@reports_errors
def run_remote_generate(args: argparse.Namespace) -> int:
    """Generate on the server named by ``--server`` and write PNGs to ``--out``."""
    request = generate_request_from_args(args)
    with client_from_args(args) as textinv:
        result = textinv.generate(request)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for path, seed in zip(write_images(result, args.out), result.seeds, strict=True):
        print(f"wrote {path} (seed {seed})")
    timings = result.timings
    print(
        f"total {timings.total_ms:.0f} ms (queue {timings.queue_wait_ms:.0f}, text encoder "
        f"{timings.text_encoder_ms:.0f}, unet {timings.unet_total_ms:.0f}, vae "
        f"{timings.vae_decode_ms:.0f})"
    )
    return EXIT_OK


# -- concepts -------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and datetimes as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), indent=2))


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def describe_concept(concept: ConceptInfo) -> str:
    return (
        f"{concept.token}: {concept.num_vectors} vector(s) x {concept.embedding_dim}, "
        f"from {concept.source_format or 'unknown format'}"
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


@reports_errors
def concepts_add(args: argparse.Namespace) -> int:
    data = args.file.read_bytes()
    with client_from_args(args) as textinv:
        concept = textinv.register_concept(
            data, filename=args.file.name, token=args.token, replace=args.replace
        )
    print(f"registered {describe_concept(concept)}")
    return EXIT_OK


@reports_errors
def concepts_ls(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concepts = textinv.list_concepts()
    if args.json:
        print_json(concepts)
        return EXIT_OK
    print_table(
        ("TOKEN", "VECTORS", "DIM", "FORMAT", "CREATED", "JOB"),
        (
            (
                c.token,
                c.num_vectors,
                c.embedding_dim,
                c.source_format,
                _when(c.created_at),
                c.job_id,
            )
            for c in concepts
        ),
    )
    return EXIT_OK


@reports_errors
def concepts_get(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concept = textinv.get_concept(args.token)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_bytes(textinv.download_concept(args.token))
    if args.json:
        print_json(concept)
    else:
        print(describe_concept(concept))
        print(f"  sha256 {concept.sha256}, {concept.size_bytes} bytes, {_when(concept.created_at)}")
    if args.out is not None:
        print(f"wrote {args.out} (diffusers format)")
    return EXIT_OK


@reports_errors
def concepts_rm(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        concept = textinv.delete_concept(args.token)
    print(f"deleted {concept.token}")
    return EXIT_OK


# -- jobs -----------------------------------------------------------------------------------------


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
    return InversionParams(
        token=args.token,
        init_text=args.init,
        num_vectors=args.vectors,
        property=ConceptProperty(args.property),
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=args.lr,
        scale_lr=args.scale_lr,
        lr_schedule=None if args.lr_schedule is None else LrSchedule(args.lr_schedule),
        warmup_steps=args.warmup,
        resolution=args.resolution,
        precision=None if args.precision is None else Precision(args.precision),
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )


def describe_job(job: JobInfo) -> str:
    loss = "" if job.loss is None else f", loss {job.loss:.4f}"
    token = job.params.token if job.params else "?"
    return f"{job.job_id} {token}: {job.state.value}, step {job.step}/{job.total_steps}{loss}"


class ProgressDisplay:
    """A progress bar on stderr: tqdm when it is installed, else a plain status line."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._last_line = 0.0
        try:
            from tqdm import tqdm
        except ImportError:
            self._tqdm: Any = None
        else:
            self._tqdm = tqdm

    def update(self, progress: JobProgress) -> None:
        if self._tqdm is not None:
            if self._bar is None:
                self._bar = self._tqdm(total=progress.total_steps, unit="step", file=sys.stderr)
            self._bar.update(progress.step - self._bar.n)
            self._bar.set_postfix(loss=f"{progress.loss:.4f}", refresh=False)
            return
        # Without tqdm: redraw in place on a terminal, else at most one line per second.
        now = time.monotonic()
        if not sys.stderr.isatty() and now - self._last_line < 1.0:
            return
        self._last_line = now
        line = (
            f"step {progress.step}/{progress.total_steps}  loss {progress.loss:.4f}  "
            f"{progress.steps_per_second:.2f} step/s  eta {progress.eta_seconds:.0f}s"
        )
        end = "\r" if sys.stderr.isatty() else "\n"
        print(line, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._tqdm is None and self._last_line and sys.stderr.isatty():
            print(file=sys.stderr)


def watch_until_done(textinv: TextInvClient, job_id: str) -> int:
    """Follow a job with a progress bar; exit 0 only when it SUCCEEDED."""
    final: JobInfo | None = None
    last_state: JobState | None = None
    display = ProgressDisplay()
    try:
        for event in textinv.watch_job(job_id):
            if isinstance(event, JobProgress):
                display.update(event)
            elif event.state.is_terminal:
                final = event
            elif event.state is not last_state:
                last_state = event.state
                print(f"job {job_id}: {event.state.value}", file=sys.stderr)
    finally:
        display.close()
    if final is None:
        return fail(f"job {job_id}: the server ended the watch before the job finished")
    print(describe_job(final))
    if final.state is JobState.SUCCEEDED:
        if final.registered_token:
            print(f"registered {final.registered_token}")
        return EXIT_OK
    return fail(f"job {job_id} {final.state.value}" + (f": {final.error}" if final.error else ""))


@reports_errors
def jobs_submit(args: argparse.Namespace) -> int:
    params = inversion_params_from_args(args)
    images = find_training_images(args.images)
    with client_from_args(args) as textinv:
        job = textinv.create_inversion_job(images, params, register_on_success=not args.no_register)
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
    if args.json:
        print_json(jobs)
        return EXIT_OK
    print_table(
        ("JOB", "TOKEN", "STATE", "STEP", "LOSS", "CREATED"),
        (
            (
                job.job_id,
                job.params.token if job.params else "?",
                job.state.value,
                f"{job.step}/{job.total_steps}",
                "-" if job.loss is None else f"{job.loss:.4f}",
                _when(job.created_at),
            )
            for job in jobs
        ),
    )
    return EXIT_OK


@reports_errors
def jobs_cancel(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        job = textinv.cancel_job(args.job_id)
    print(describe_job(job))
    return EXIT_OK


@reports_errors
def server_info(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        print_json(textinv.get_server_info())
    return EXIT_OK


# -- parser wiring --------------------------------------------------------------------------------


def _add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's flags, named as `textinv invert` names them; unset means the default."""
    parser.add_argument("--token", required=True, help='the new pseudo-word, e.g. "<cat-toy>"')
    parser.add_argument("--init", required=True, help='initializer text, e.g. "toy"')
    parser.add_argument("--vectors", type=positive_int, default=1, help="vectors K, 1..16 (1)")
    parser.add_argument("--property", choices=[p.value for p in ConceptProperty], default="object")
    parser.add_argument("--steps", type=positive_int, help="optimizer steps")
    parser.add_argument("--batch-size", type=positive_int)
    parser.add_argument("--grad-accum", type=positive_int, help="micro-batches per step")
    parser.add_argument("--lr", type=positive_float, help="learning rate")
    parser.add_argument(
        "--scale-lr", action="store_true", help="multiply --lr by batch size x grad accum"
    )
    parser.add_argument("--lr-schedule", choices=[s.value for s in LrSchedule])
    parser.add_argument("--warmup", type=non_negative_int, help="learning-rate warm-up steps")
    parser.add_argument("--resolution", type=size_int, help="training resolution, multiple of 8")
    parser.add_argument("--precision", choices=[p.value for p in Precision])
    parser.add_argument("--seed", type=seed_int, help="seed of the run (default: server picks)")
    parser.add_argument("--checkpoint-every", type=positive_int, help="checkpoint every N steps")


def _add_command(
    subparsers: SubParsers, name: str, handler: Handler, help_text: str
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_connection_arguments(parser)
    parser.set_defaults(func=handler)
    return parser


def _add_concepts_commands(subparsers: SubParsers) -> None:
    concepts = subparsers.add_parser("concepts", help="manage a server's registered concepts")
    commands = concepts.add_subparsers(dest="concepts_command", metavar="COMMAND", required=True)

    add = _add_command(commands, "add", concepts_add, "register a concept file on the server")
    add.add_argument("file", type=Path, help="concept file: safetensors, .bin or .pt")
    add.add_argument("--token", help="register under this token instead of the file's")
    add.add_argument("--replace", action="store_true", help="replace a concept with that token")

    ls = _add_command(commands, "ls", concepts_ls, "list the registered concepts")
    ls.add_argument("--json", action="store_true", help="print JSON")

    get = _add_command(commands, "get", concepts_get, "show a concept; --out downloads it")
    get.add_argument("token")
    get.add_argument("--out", type=Path, help="write the concept here (diffusers safetensors)")
    get.add_argument("--json", action="store_true", help="print JSON")

    rm = _add_command(commands, "rm", concepts_rm, "delete a concept")
    rm.add_argument("token")


def _add_jobs_commands(subparsers: SubParsers) -> None:
    jobs = subparsers.add_parser("jobs", help="run inversion jobs on a server")
    commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)

    submit = _add_command(commands, "submit", jobs_submit, "learn a concept from images")
    submit.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        help="image files or folders of them; NAME.txt beside NAME.png is its caption ('{}' "
        "marks the token)",
    )
    _add_trainer_arguments(submit)
    submit.add_argument(
        "--no-register", action="store_true", help="do not register the concept on success"
    )
    submit.add_argument("--watch", action="store_true", help="follow the job until it finishes")

    watch = _add_command(commands, "watch", jobs_watch, "follow a job with a progress bar")
    watch.add_argument("job_id")

    ls = _add_command(commands, "ls", jobs_ls, "list jobs, newest first")
    ls.add_argument(
        "--state", action="append", choices=[s.value for s in JobState], help="repeatable"
    )
    ls.add_argument("--json", action="store_true", help="print JSON")

    cancel = _add_command(commands, "cancel", jobs_cancel, "cancel a job")
    cancel.add_argument("job_id")


def add_remote_subcommands(subparsers: SubParsers) -> None:
    """Add ``concepts add|ls|get|rm`` and ``jobs submit|watch|ls|cancel`` (each sets ``func``)."""
    _add_concepts_commands(subparsers)
    _add_jobs_commands(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """The standalone client command (``python -m textinv_client``): remote commands only."""
    parser = argparse.ArgumentParser(
        prog="python -m textinv_client", description="Talk to a textinv server (no torch needed)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate = _add_command(subparsers, "generate", run_remote_generate, "generate on a server")
    add_generation_arguments(generate)
    add_remote_subcommands(subparsers)
    _add_command(subparsers, "info", server_info, "describe the server (JSON)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
