"""What concepts cost in ``textinv bench generate``: 0 against 3 in one request, end to end and in
the host-side prompt work, and adding one to a running pipeline's table (no reload)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from textinv.cli.bench.generate_runners import Stats, our_runner, round_robin
from textinv.concepts import Concept, concept_to_bytes, parse_concept
from textinv_server.backends import BackendName
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest

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
    width = pipeline.host.text_width
    generator = torch.Generator().manual_seed(1)
    table: dict[str, torch.Tensor] = {  # token → [K, D]
        f"<c{i}>": torch.randn(CONCEPT_VECTORS, width, generator=generator) for i in range(3)
    }
    with_concepts = replace(request, prompt=PROMPT_CONCEPTS)
    runners = {
        "0": our_runner(pipeline, request, {}),
        "3": our_runner(pipeline, with_concepts, table),
    }
    samples = round_robin(runners, warmup, repeats)
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
        **_add_concept_cost(pipeline, request, table),
    }


def _add_concept_cost(
    pipeline: GenerationPipeline, request: GenerationRequest, table: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Parse + check a concept file's bytes and publish it in the live table; then use it."""
    width = pipeline.host.text_width
    vectors = torch.randn(CONCEPT_VECTORS, width, generator=torch.Generator().manual_seed(2))
    data = concept_to_bytes(Concept("<new>", vectors))
    backend_before = id(pipeline.backend)

    def add() -> None:
        concept = parse_concept(data, "new.safetensors", expected_width=width)
        table[concept.token] = concept.vectors

    add_ms = median_ms(add, 200)
    del table["<new>"]
    start = time.perf_counter()
    add()
    first_use = pipeline(replace(request, prompt="a <new> toy"), table)
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
