"""What concepts cost in ``textinv bench generate``: 0 against 3 in one request, end to end and in
the host-side prompt work, and adding one to a running pipeline's table (no reload).

``registry_scaling`` (``textinv bench concepts``): the host-side cost of a request with 10 and
with 10,000 concepts registered, as a ratio: it should stay near 1.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from textinv.cli.bench.generate_runners import Stats, our_runner, round_robin
from textinv.concept_fit import Widths, parse_for_model, per_encoder
from textinv.concept_table import ConceptTable
from textinv.concepts import Concept, concept_to_bytes
from textinv.sdxl_text import SdxlConcepts
from textinv_server.backends import BackendName
from textinv_server.pipeline import GenerationPipeline
from textinv_server.registry import DEFAULT_MAX_CONCEPTS, ConceptRegistry
from textinv_server.requests import GenerationRequest
from textinv_server.store import DEFAULT_TENANT
from textinv_server.store_sqlite import SqliteStore

PROMPT_CONCEPTS = "a photo of <c0> with <c1> in <c2> style"
CONCEPT_VECTORS = 2  # K, each concept's vectors


def concept_costs(
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """0 vs 3 concepts end to end and in host-side prompt work; adding one to a live table."""
    name = BackendName.ONNXRUNTIME.value if "onnxruntime" in pipelines else next(iter(pipelines))
    pipeline = pipelines[name]
    widths = pipeline.host.text_widths
    concepts = random_concepts([f"<c{i}>" for i in range(3)], widths, 1)
    table = per_encoder(concepts, len(widths) > 1)
    with_concepts = replace(request, prompt=PROMPT_CONCEPTS)
    runners = {
        "0": our_runner(pipeline, request, {}),
        "3": our_runner(pipeline, with_concepts, table),
    }
    samples = round_robin(runners, warmup, repeats)
    for count, each in samples.items():  # round_robin keeps a runner's error; here it is fatal
        if each.error is not None:
            raise RuntimeError(f"{name} with {count} concepts failed: {each.error['error']}")
    e2e_0, e2e_3 = (Stats.of(samples[k].e2e).median for k in ("0", "3"))
    prepare_0 = median_ms(lambda: pipeline.prepare(request, {}), 200)
    prepare_3 = median_ms(lambda: pipeline.prepare(with_concepts, table), 200)
    return {
        "backend": name,
        "e2e_0_concepts_ms": e2e_0,
        "e2e_3_concepts_ms": e2e_3,
        "e2e_overhead_pct": 100 * (e2e_3 - e2e_0) / e2e_0,
        "prompt_prepare_0_concepts_ms": prepare_0,
        "prompt_prepare_3_concepts_ms": prepare_3,
        "prepare_overhead_pct_of_e2e": 100 * (prepare_3 - prepare_0) / e2e_0,
        **_add_concept_cost(pipeline, request, concepts),
    }


def concept_lines(c: dict[str, Any]) -> list[str]:
    """``concept_costs``'s figures as ``bench generate`` prints them."""
    return [
        f"concepts on {c['backend']}: e2e {c['e2e_0_concepts_ms']:.1f} ms with 0, "
        f"{c['e2e_3_concepts_ms']:.1f} ms with 3 ({c['e2e_overhead_pct']:+.2f}%, noise included); "
        f"prompt work {c['prompt_prepare_0_concepts_ms']:.3f} → "
        f"{c['prompt_prepare_3_concepts_ms']:.3f} ms ({c['prepare_overhead_pct_of_e2e']:+.3f}% "
        "of e2e)",
        f"adding a concept to the running pipeline: {c['add_concept_ms']:.3f} ms "
        f"(parse + check + publish); first request with it "
        f"{c['first_request_with_new_concept_ms']:.0f} ms, backend reloaded: "
        f"{c['backend_reloaded']}",
    ]


def random_concepts(tokens: list[str], widths: Widths, seed: int) -> list[Concept]:
    """Seeded concepts of ``CONCEPT_VECTORS`` vectors for a model of ``widths`` (SDXL: both
    sets)."""
    generator = torch.Generator().manual_seed(seed)
    sets = [[torch.randn(CONCEPT_VECTORS, w, generator=generator) for w in widths] for _ in tokens]
    return [
        Concept(token, first, vectors_2=rest[0] if rest else None)
        for token, (first, *rest) in zip(tokens, sets, strict=True)
    ]


def _add_concept_cost(
    pipeline: GenerationPipeline, request: GenerationRequest, concepts: list[Concept]
) -> dict[str, Any]:
    """Parse + check a concept file's bytes and publish it with the others in a new table (as
    the registry builds its tables, ``per_encoder``); then use it."""
    widths = pipeline.host.text_widths
    data = concept_to_bytes(random_concepts(["<new>"], widths, 2)[0])
    backend_before = id(pipeline.backend)

    def add() -> ConceptTable | SdxlConcepts:
        new = parse_for_model(data, "new.safetensors", widths)
        return per_encoder([*concepts, new], len(widths) > 1)

    add_ms = median_ms(add, 200)
    start = time.perf_counter()
    first_use = pipeline(replace(request, prompt="a <new> toy"), add())
    first_use_ms = (time.perf_counter() - start) * 1000
    return {
        "add_concept_ms": add_ms,
        "first_request_with_new_concept_ms": first_use_ms,
        "first_request_images": len(first_use.images),
        "backend_reloaded": id(pipeline.backend) != backend_before,
    }


def median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def registry_scaling(
    pipeline: GenerationPipeline,
    request: GenerationRequest,
    counts: tuple[int, int] = (10, 10_000),
    repeats: int = 200,
) -> dict[str, Any]:
    """The host-side cost of one ``Generate`` with ``counts[0]`` and ``counts[1]`` concepts
    registered: the registry's snapshot, then prompt parsing, embedding lookup and splice
    (``pipeline.prepare``). Both registries are real (SQLite, files on tmpfs where there is one)
    and filled through ``register``; the prompt names three of their concepts."""
    with_concepts = replace(request, prompt=PROMPT_CONCEPTS)
    figures: dict[str, Any] = {"prompt": PROMPT_CONCEPTS, "few": counts[0], "many": counts[1]}
    registries: dict[int, ConceptRegistry] = {}
    with tempfile.TemporaryDirectory(prefix="textinv-bench-concepts-", dir=_scratch()) as scratch:
        for count in counts:
            folder = Path(scratch) / str(count)
            fill_ms = _fill_registry(folder, pipeline.host.text_width, count)
            figures[f"register_{count}_concepts_ms_each"] = fill_ms / count
            start = time.perf_counter()
            registries[count] = _open_registry(folder, pipeline.host.text_width, count)
            figures[f"start_{count}_concepts_ms"] = (time.perf_counter() - start) * 1000
        runners = {
            count: host_generate(pipeline, with_concepts, registry)
            for count, registry in registries.items()
        }
        for count, median in interleaved_medians(runners, repeats).items():
            figures[f"host_generate_{count}_concepts_ms"] = median
        for registry in registries.values():
            registry.store.close()
    few, many = (figures[f"host_generate_{count}_concepts_ms"] for count in counts)
    figures["host_generate_ratio"] = many / few
    return figures


def host_generate(
    pipeline: GenerationPipeline,
    request: GenerationRequest,
    registry: ConceptRegistry,
    tenant: str = DEFAULT_TENANT,
) -> Callable[[], object]:
    """What ``Generate`` does on the host before the batcher: the prompt's concepts (from the
    registry's cache, after the first call), then ``prepare``."""
    return lambda: pipeline.prepare(request, registry.concepts_for(tenant, request.prompts()))


def interleaved_medians(runners: dict[int, Callable[[], object]], repeats: int) -> dict[int, float]:
    """Median milliseconds of each runner, taking turns so that a noisy neighbour hurts all."""
    times: dict[int, list[float]] = {key: [] for key in runners}
    for _ in range(repeats):
        for key, work in runners.items():
            start = time.perf_counter()
            work()
            times[key].append((time.perf_counter() - start) * 1000)
    return {key: statistics.median(values) for key, values in times.items()}


def _scratch() -> str | None:
    """tmpfs where there is one: filling 10,000 rows is then not 10,000 disk syncs."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def _open_registry(folder: Path, width: int, count: int) -> ConceptRegistry:
    store = SqliteStore(folder / "textinv.db")
    return ConceptRegistry(
        store,
        widths=(width,),
        vocabulary=(),
        max_file_bytes=1 << 20,
        max_concepts=max(count, DEFAULT_MAX_CONCEPTS),
    )


def _fill_registry(folder: Path, width: int, count: int) -> float:
    """Register ``<c0>`` … through the registry, as uploads are; returns the milliseconds."""
    registry = _open_registry(folder, width, count)
    generator = torch.Generator().manual_seed(3)
    start = time.perf_counter()
    for i in range(count):
        vectors = torch.randn(CONCEPT_VECTORS, width, generator=generator)
        registry.register(concept_to_bytes(Concept(f"<c{i}>", vectors)), f"c{i}.safetensors")
    elapsed = (time.perf_counter() - start) * 1000
    registry.store.close()
    return elapsed
