"""``textinv bench store``: the shared store (PostgreSQL) under the figures issue 14 names, each
with its baseline, measured in one run on the embedded model (or ``--model``):

1. propagation (``store_replicas``): real ``textinv serve`` replicas on the store; a concept
   registered through one is usable on another after p50 / p99 ms, over ``--registrations``
   rounds: registered after the other replica had missed the token (so its negative cache must
   be dropped by LISTEN/NOTIFY), registered cold (never looked up there), and deleted. The
   baseline is the probe's own round trip; the goal (100 ms) is printed beside p99;
2. host-side cost (``store_scaling``): ``RegisterConcept`` and ``Generate`` (cache warm, and
   cold) with ``--few`` and with ``--concepts`` concepts in the tenant, medians and ratios;
3. throughput: closed loop at ``--concurrency`` against one replica, then against all of them
   through one client (round_robin), and the ratio.

The store is ``--store`` or ``$TEXTINV_STORE``; without a reachable PostgreSQL the command says
so and exits 2. What it writes (tenants ``bench-<count>``, tokens ``<s…>``) it deletes again.
``store_print`` turns the samples into figures and the table; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textinv_client.flags import add_flags, flag, from_flags

Say = Callable[[str], object]


@dataclass(frozen=True)
class StoreBenchSettings:
    store: str = field(
        default="", metadata=flag("a postgresql:// URL (default: $TEXTINV_STORE)", metavar="URL")
    )
    model: str | None = field(  # a model folder, or None: the embedded model
        default=None, metadata=flag("a diffusers model folder (default: the embedded model)")
    )
    registrations: int = field(default=100, metadata=flag("propagation rounds (100)"))
    concepts: int = field(default=100_000, metadata=flag("concepts in the large world (100000)"))
    few: int = field(default=10, metadata=flag("concepts in the small world (10)"))
    repeats: int = field(default=200, metadata=flag("host-side timings per figure (200)"))
    replicas: int = field(default=3, metadata=flag("textinv serve replicas started (3)"))
    concurrency: int = field(default=8, metadata=flag("throughput: concurrent clients (8)"))
    requests: int = field(default=96, metadata=flag("throughput: requests per point (96)"))
    steps: int = field(default=1, metadata=flag("throughput: denoising steps per request (1)"))
    replica_threads: int = field(
        default=0, metadata=flag("torch threads of each replica (0: torch's default)")
    )

    def __post_init__(self) -> None:
        from textinv.cli.bench.store_scaling import NAMED

        for name in ("few", "concepts"):
            if getattr(self, name) < NAMED:
                raise ValueError(f"--{name} must be ≥ {NAMED} (the prompt names {NAMED})")
        if self.concepts <= self.few:
            raise ValueError(f"--concepts ({self.concepts}) must exceed --few ({self.few})")
        if self.replicas < 2:
            raise ValueError(f"--replicas must be ≥ 2 (propagation needs two), got {self.replicas}")
        for name in ("registrations", "repeats", "concurrency", "requests", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1")

    def store_url(self) -> str:
        """The PostgreSQL URL to measure; ``InvalidInputError`` when there is none."""
        from textinv.errors import InvalidInputError

        url = self.store or os.environ.get("TEXTINV_STORE", "")
        if not url.startswith(("postgresql://", "postgres://")):
            raise InvalidInputError(
                "bench store measures PostgreSQL: give --store postgresql://USER@HOST/DB or set "
                f"$TEXTINV_STORE (got {'nothing' if not url else repr(url.split(':', 1)[0])})"
            )
        return url


def add_store_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "store", help="PostgreSQL: propagation between replicas, cost at 100,000 concepts"
    )
    add_flags(bench, StoreBenchSettings)
    bench.add_argument("--out", type=Path, help="also write the report as JSON")
    bench.set_defaults(func=run_store_bench)


def run_store_bench(args: argparse.Namespace) -> int:
    from textinv.cli.bench.store_print import table_lines

    settings = from_flags(StoreBenchSettings, args)
    report = measure_store(settings, progress=print)
    for line in table_lines(report):
        print(line)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def measure_store(settings: StoreBenchSettings, progress: Say = print) -> dict[str, Any]:
    """The whole report; ``StoreUnavailableError`` (before anything is loaded) when the store
    cannot be reached."""
    from textinv.model import resolve_model_folder
    from textinv_server.store_postgres import PostgresStore

    url = settings.store_url()
    with tempfile.TemporaryDirectory(prefix="textinv-bench-store-") as scratch:
        store = PostgresStore(url, scratch=Path(scratch) / "store")
        try:
            folder = resolve_model_folder(settings.model)
            report = _header(settings, folder)
            report["host_costs"] = _host_costs(settings, url, store, folder, progress)
        finally:
            store.close()
        report |= _replica_figures(settings, url, Path(scratch), report, progress)
    return report


def _header(settings: StoreBenchSettings, folder: Path) -> dict[str, Any]:
    import torch

    from textinv.cli.bench.store_replicas import smallest_side
    from textinv.hardware import cpu_features

    machine = {
        "processor": cpu_features().describe(),
        "threads": os.cpu_count(),
        "torch": torch.get_num_threads(),
    }
    shown = asdict(settings) | {"store": "postgresql", "model": settings.model or "embedded"}
    return {"machine": machine, "settings": shown | {"side": smallest_side(folder)}}


def _host_costs(
    settings: StoreBenchSettings, url: str, store: Any, folder: Path, progress: Say
) -> dict[str, Any]:
    from textinv.cli.bench.store_scaling import host_costs
    from textinv.testing import load_benchmark_model
    from textinv_server.pipeline import load_generation_pipeline

    pipeline = load_generation_pipeline(load_benchmark_model(str(folder)))
    counts = (settings.few, settings.concepts)
    progress(f"host-side costs: filling {counts[0]} and {counts[1]} concepts in PostgreSQL")
    return host_costs(url, store, pipeline, counts, settings.repeats)


def _replica_figures(
    settings: StoreBenchSettings, url: str, scratch: Path, report: dict[str, Any], progress: Say
) -> dict[str, Any]:
    from textinv.cli.bench.store_print import propagation_figures, throughput_figures
    from textinv.cli.bench.store_replicas import (
        measure_propagation,
        measure_throughput,
        start_replicas,
        stop_all,
    )
    from textinv_client import TextInvClient

    side = report["settings"]["side"]
    progress(f"starting {settings.replicas} textinv serve replicas on the store")
    replicas = start_replicas(
        settings.model, scratch, url, settings.replicas, settings.replica_threads
    )
    try:
        targets = [replica.target for replica in replicas]
        with TextInvClient(targets[0]) as client:
            info = client.get_server_info()
        width = info.model.embedding_dim if info.model is not None else 0
        progress(f"propagation: {settings.registrations} rounds over {targets}")
        samples = measure_propagation(targets, settings.registrations, width, side)
        progress(f"throughput: {settings.requests} requests at concurrency {settings.concurrency}")
        loads = measure_throughput(
            targets, settings.concurrency, settings.requests, settings.steps, side
        )
    finally:
        stop_all(replicas)
    return {
        "propagation": propagation_figures(samples),
        "throughput": throughput_figures(loads, settings.replicas),
    }
