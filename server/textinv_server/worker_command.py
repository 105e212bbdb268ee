"""``textinv worker``: a training-only process on the shared store, for a GPU pool apart from
serving.

It loads the torch model, opens the store, and runs the job manager's workers: they claim queued
jobs (and jobs whose worker died) from PostgreSQL, train them, save checkpoints to the store and
register what they learned, exactly as a ``textinv serve`` replica's workers do. It serves no
RPCs; clients create, watch and cancel jobs through any replica. On SIGTERM or SIGINT it asks its
jobs to checkpoint and gives their leases back, so another worker resumes them at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from textinv.errors import InvalidInputError
from textinv_client.flags import add_flags, from_flags
from textinv_server.config import Limits, ServerConfig
from textinv_server.serve_command import DEFAULT_DATA_DIR, STORE_ENV, environment_value

log = logging.getLogger(__name__)


def add_worker_subcommand(subparsers: argparse._SubParsersAction) -> None:
    worker = subparsers.add_parser(
        "worker", help="train inversion jobs from a shared PostgreSQL store (no RPCs)"
    )
    worker.add_argument("--model", default=None, help="a diffusers model folder or hub id")
    worker.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="scratch folder")
    worker.add_argument("--store", default=None, help="postgresql:// URL; also $TEXTINV_STORE")
    worker.add_argument("--grace", type=float, default=30.0, help="seconds to checkpoint at stop")
    worker.add_argument(
        "--lease-seconds",
        type=float,
        default=ServerConfig.__dataclass_fields__["lease_seconds"].default,
        help="a job's lease: a worker that stops renewing it this long loses the job to another",
    )
    add_flags(worker, Limits)
    worker.set_defaults(func=run_worker)


def worker_config(args: argparse.Namespace) -> ServerConfig:
    """The worker's settings, as the server configuration that the job manager reads."""
    store = args.store if args.store is not None else environment_value(STORE_ENV) or ""
    if not store.startswith(("postgresql://", "postgres://")):
        raise InvalidInputError(
            "textinv worker needs the store that the serving replicas share: give --store "
            "postgresql://USER@HOST/DB (or $TEXTINV_STORE)"
        )
    if not args.lease_seconds >= 1:
        raise InvalidInputError(f"--lease-seconds must be ≥ 1, got {args.lease_seconds}")
    limits = from_flags(Limits, args)  # --max-concurrent-jobs: jobs this worker trains at once
    if limits.max_concurrent_jobs < 1:
        raise InvalidInputError(
            f"--max-concurrent-jobs must be ≥ 1, got {limits.max_concurrent_jobs}"
        )
    return ServerConfig(
        model=args.model,
        data_dir=args.data,
        store=store,
        limits=limits,
        grace_seconds=args.grace,
        lease_seconds=args.lease_seconds,
        warmup=False,
    )


def run_worker(args: argparse.Namespace) -> int:
    import torch

    from textinv.model import load_base_model
    from textinv_server.jobs import textinv_trainer
    from textinv_server.service import build_jobs, build_registry
    from textinv_server.store import open_store

    config = worker_config(args)
    model = load_base_model(config.model)
    vocabulary = model.tokenizer.get_vocab()
    # On a GPU the trainer (device auto) loads its own copy there; on a CPU it shares this one.
    shared = None if torch.cuda.is_available() else model
    store = open_store(config.store, config.data_dir)
    try:
        registry = build_registry(store, config, model.text_widths, vocabulary)
        jobs = build_jobs(
            store, registry, config, textinv_trainer(shared, config.model), vocabulary
        )
        jobs.start()
        print(f"textinv worker {jobs.runs.worker_id} ready", flush=True)
        _wait_for_stop()
        log.info("stopping: %.0f s for running jobs to checkpoint", config.grace_seconds)
        jobs.stop(config.grace_seconds)
    finally:
        store.close()
    return 0


def _wait_for_stop() -> None:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    while not stop.wait(1.0):  # a timeout keeps the main thread responsive to signals
        pass
