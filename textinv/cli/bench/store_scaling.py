"""The host-side cost of ``RegisterConcept`` and ``Generate`` on PostgreSQL with few and with many
concepts registered, for ``textinv bench store``.

Each world is a tenant of its own in the benchmark's database (``bench-<count>``), emptied
before and after. The prompt's three concepts (``<c0>`` … ``<c2>``) are registered through the
registry, as uploads are; the rest are inserted with one ``COPY`` that shares one file among all
of them (``concept_files`` is keyed by sha256), since filling 100,000 through ``register`` would
take most of an hour and measures nothing new. The figures:

- register: ``ConceptRegistry.register`` of a new token (validation, then ``put_concept``'s
  transaction: the tenant's lock, the fold check, the count), the worlds taking turns;
- generate, warm: ``concepts_for`` + ``pipeline.prepare`` (``generate_concepts.host_generate``)
  with the registry's caches holding the prompt's words;
- generate, cold: the same through a registry that caches nothing (both caches sized 0), so
  every call looks the prompt's words up in the store and loads the concepts' files, as the
  first request after a change does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import psycopg
import torch

from textinv.cli.bench.generate_concepts import (
    CONCEPT_VECTORS,
    PROMPT_CONCEPTS,
    host_generate,
    interleaved_medians,
)
from textinv.concept_table import fold
from textinv.concepts import Concept, ConceptFormat, concept_to_bytes
from textinv_server.pipeline import GenerationPipeline
from textinv_server.registry import ConceptRegistry
from textinv_server.requests import GenerationRequest
from textinv_server.store import Store

NAMED = 3  # the prompt's concepts, registered through the registry
_COLUMNS = (
    "tenant, token, fold, sha256, num_vectors, width, source_format, size_bytes, created_at, job_id"
)


def tenant_of(count: int) -> str:
    return f"bench-{count}"


def concept_file(token: str, width: int, seed: int) -> bytes:
    vectors = torch.randn(CONCEPT_VECTORS, width, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))  # [K, D]


def registry(store: Store, width: int, limit: int, *, cold: bool = False) -> ConceptRegistry:
    """A registry like a replica's; ``cold``: one that caches nothing."""
    caches = {"cached_concepts": 0, "cached_misses": 0} if cold else {}
    return ConceptRegistry(
        store, widths=(width,), vocabulary=(), max_file_bytes=1 << 20, max_concepts=limit, **caches
    )


def fill(url: str, target: ConceptRegistry, count: int) -> float:
    """``count`` concepts in ``tenant_of(count)``: the prompt's three through ``register``, the
    others in one ``COPY``; the seconds it took."""
    tenant, width = tenant_of(count), target.widths[0]
    start = time.perf_counter()
    for i in range(NAMED):
        target.register(concept_file(f"<c{i}>", width, i), "c.safetensors", tenant=tenant)
    shared = concept_file("<shared>", width, NAMED)
    sha256 = hashlib.sha256(shared).hexdigest()
    source = ConceptFormat.DIFFUSERS.value
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO concept_files (sha256, data) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (sha256, shared),
        )
        with conn.cursor().copy(f"COPY concepts ({_COLUMNS}) FROM STDIN") as copy:
            now = time.time()
            for i in range(NAMED, count):
                token = f"<c{i}>"
                row = (tenant, token, fold(token), sha256, CONCEPT_VECTORS, width, source)
                copy.write_row((*row, len(shared), now, ""))
        conn.execute(  # the count that max_concepts is checked against, kept as the store keeps it
            "UPDATE tenants SET concept_count = concept_count + %s WHERE tenant = %s",
            (count - NAMED, tenant),
        )
    return time.perf_counter() - start


def clear(url: str, counts: tuple[int, ...]) -> None:
    """Delete the benchmark's tenants, their concepts and the files only they used."""
    with psycopg.connect(url) as conn, conn.transaction():
        for count in counts:
            tenant = tenant_of(count)
            found = conn.execute(
                "DELETE FROM concepts WHERE tenant = %s RETURNING sha256", (tenant,)
            ).fetchall()
            conn.execute("DELETE FROM tenants WHERE tenant = %s", (tenant,))
            conn.execute(
                "DELETE FROM concept_files f WHERE sha256 = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM concepts c WHERE c.sha256 = f.sha256)",
                (sorted({row[0] for row in found}),),
            )


@contextmanager
def worlds(url: str, store: Store, width: int, counts: tuple[int, int]) -> Iterator[dict[str, Any]]:
    """The two worlds filled (``fill_<count>_s``), emptied again on the way out."""
    clear(url, counts)
    try:
        limit = max(counts) * 2 + 1000  # room for the registrations measured on top
        figures: dict[str, Any] = {"few": counts[0], "many": counts[1], "prompt": PROMPT_CONCEPTS}
        filler = registry(store, width, limit)
        for count in counts:
            figures[f"fill_{count}_s"] = fill(url, filler, count)
        yield figures
    finally:
        clear(url, counts)


def host_costs(
    url: str,
    store: Store,
    pipeline: GenerationPipeline,
    counts: tuple[int, int],
    repeats: int,
) -> dict[str, Any]:
    """Median ms of register, warm generate and cold generate in each world, and the ratios
    many / few (flat is the goal)."""
    width = pipeline.host.text_width
    request = replace(GenerationRequest("", steps=1), prompt=PROMPT_CONCEPTS)
    with _quiet_registry(), worlds(url, store, width, counts) as figures:
        limit = max(counts) * 2 + 1000
        warm = {count: registry(store, width, limit) for count in counts}
        cold = {count: registry(store, width, limit, cold=True) for count in counts}
        kinds: dict[str, dict[int, Callable[[], object]]] = {
            "register": {count: _registering(warm[count], count) for count in counts},
            "generate_warm": {
                count: host_generate(pipeline, request, warm[count], tenant_of(count))
                for count in counts
            },
            "generate_cold": {
                count: host_generate(pipeline, request, cold[count], tenant_of(count))
                for count in counts
            },
        }
        for kind, runners in kinds.items():
            for runner in runners.values():
                runner()  # warm-up: caches filled, connections made
            medians = interleaved_medians(runners, repeats)
            for count, median in medians.items():
                figures[f"{kind}_{count}_concepts_ms"] = median
            figures[f"{kind}_ratio"] = medians[counts[1]] / medians[counts[0]]
    return figures


def _registering(target: ConceptRegistry, count: int) -> Callable[[], object]:
    """Each call registers the next new token of the world (its file made beforehand)."""
    tenant, made = tenant_of(count), iter(range(1 << 30))
    files = [concept_file(f"<r{i}>", target.widths[0], 1000 + i) for i in range(64)]

    def register() -> object:
        i = next(made)
        return target.register(files[i % 64], "r.safetensors", tenant=tenant, token=f"<r{i}>")

    return register


@contextmanager
def _quiet_registry() -> Iterator[None]:
    """No log line per registration while hundreds are timed."""
    logger = logging.getLogger("textinv_server.registry")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
