"""``textinv bench concepts``: a request's host-side cost with 10 and with 10,000 concepts
registered, measured in one run, as a ratio.

The cost is what a ``Generate`` does on the host before any backend work: take the registry's
snapshot, then parse the prompt, look up its embeddings and splice the concepts' rows in
(``GenerationPipeline.prepare``). Both registries are real and filled through ``register``; the
prompt names three concepts of each. Start-up time (every file verified against its sha256) and
the cost of one registration are printed too.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from textinv_client.flags import add_flags, flag, from_flags


@dataclass(frozen=True)
class ConceptsBenchSettings:
    model: str | None = field(  # a model folder, sd15-shape, or None: the embedded model
        default=None, metadata=flag("a model folder, sd15-shape or sdxl-shape (default: embedded)")
    )
    few: int = field(default=10, metadata=flag("concepts registered for the baseline (10)"))
    many: int = field(default=10_000, metadata=flag("concepts registered to compare (10000)"))
    repeats: int = field(default=200, metadata=flag("measured requests per registry (200)"))

    def __post_init__(self) -> None:
        for name in ("few", "many"):
            if getattr(self, name) < 3:
                raise ValueError(f"--{name} must be ≥ 3 (the prompt names 3 concepts)")
        if self.repeats < 1:
            raise ValueError(f"--repeats must be ≥ 1, got {self.repeats}")


def add_concepts_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "concepts", help="a request's host-side cost with 10 against 10,000 concepts registered"
    )
    add_flags(bench, ConceptsBenchSettings)
    bench.set_defaults(func=run_concepts_bench)


def run_concepts_bench(args: argparse.Namespace) -> int:
    from textinv.cli.bench.generate_concepts import registry_scaling
    from textinv.testing import load_benchmark_model
    from textinv_server.pipeline import load_generation_pipeline
    from textinv_server.requests import GenerationRequest

    settings = from_flags(ConceptsBenchSettings, args)
    pipeline = load_generation_pipeline(load_benchmark_model(settings.model))
    request = GenerationRequest("", steps=1)
    f = registry_scaling(pipeline, request, (settings.few, settings.many), settings.repeats)
    few, many = f["few"], f["many"]
    print(
        f"concepts bench: prompt {f['prompt']!r}, median of {settings.repeats} requests, "
        f"{pipeline.backend.name.value} in {pipeline.backend.precision.describe()}"
    )
    for count in (few, many):
        print(
            f"{count:>6} concepts: host-side generate {f[f'host_generate_{count}_concepts_ms']:.3f}"
            f" ms, start-up {f[f'start_{count}_concepts_ms']:.0f} ms, register "
            f"{f[f'register_{count}_concepts_ms_each']:.2f} ms each"
        )
    print(f"ratio {many} / {few} concepts: {f['host_generate_ratio']:.2f}×")
    return 0
