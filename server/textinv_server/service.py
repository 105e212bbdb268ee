"""Everything the gRPC servicer calls, in plain Python: the runtime behind the micro-batcher, the
concept registry, the job manager and the limits. Built once at start-up by ``build_service``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textinv_server.batching import MicroBatcher
from textinv_server.config import Limits, ServerConfig
from textinv_server.jobs import JobManager, textinv_trainer
from textinv_server.pipeline import GenerationPipeline, Outcome, PreparedRequest
from textinv_server.principal import current_principal, managing_tenant
from textinv_server.registry import ConceptRegistry
from textinv_server.requests import GenerationRequest, GenerationResult, StepProgress
from textinv_server.rpc_requests import (
    ConceptLookup,
    CreateJobRequest,
    JobLookup,
    ListJobsRequest,
    Page,
    RegisterConceptRequest,
    encode_page_token,
)
from textinv_server.store import ConceptRow, JobRow, Store, open_store, replica_id

# Job creations (each decodes up to max_images_per_job images) that run at once; more wait.
MAX_CONCURRENT_DECODES = 2


@dataclass
class Service:
    """The servicer's one collaborator. Each method takes a checked request value
    (``textinv_server.convert``) and runs what is CPU- or disk-heavy (parsing, hashing, fsync,
    SQLite, image decoding) on a worker thread, so the event loop keeps answering health checks
    and streams meanwhile.

    Each call acts for the caller's tenant (``current_principal``, set by the API-key
    interceptor): it sees and changes only that tenant's concepts and jobs. Changes need a key that
    may manage (``managing_tenant``)."""

    config: ServerConfig
    pipeline: GenerationPipeline
    registry: ConceptRegistry
    jobs: JobManager
    batcher: MicroBatcher[PreparedRequest, Outcome]
    store: Store
    device: str
    decodes: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_DECODES)
    )

    @property
    def limits(self) -> Limits:
        return self.config.limits

    # --- generation -------------------------------------------------------------------------

    async def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None = None,
    ) -> tuple[GenerationResult, float]:
        """Queue and run one checked request; return its result and its queue wait in ms."""

        # Every error the request can still cause (backend sizes, unknown concepts) is raised
        # here, at arrival, before it takes a place in the queue.
        tenant = current_principal().tenant

        def prepare() -> PreparedRequest:
            concepts = self.registry.concepts_for(tenant, request.prompts())
            return self.pipeline.prepare(request, concepts, on_step=on_step, limits=self.limits)

        prepared = await asyncio.to_thread(prepare)
        arrived = time.perf_counter()
        result = await self.batcher.submit(prepared)
        if not isinstance(result, GenerationResult):  # the request was cancelled mid-way
            raise result
        wait_ms = max((time.perf_counter() - arrived) * 1000 - result.timings.total_ms, 0.0)
        return result, wait_ms

    # --- concepts ---------------------------------------------------------------------------

    async def register_concept(self, request: RegisterConceptRequest) -> ConceptRow:
        return await asyncio.to_thread(
            self.registry.register,
            request.data,
            request.filename,
            tenant=managing_tenant("register concepts"),
            token=request.token,
            replace=request.replace,
        )

    async def list_concepts(self, page: Page) -> tuple[list[ConceptRow], str]:
        """One page of concepts and the next page's token ("" on the last page)."""
        tenant = current_principal().tenant
        rows = await asyncio.to_thread(self.registry.list, tenant, page.after(), page.size + 1)
        more = len(rows) > page.size
        return rows[: page.size], encode_page_token(rows[page.size - 1].token) if more else ""

    async def get_concept(self, lookup: ConceptLookup) -> tuple[ConceptRow, bytes]:
        tenant = current_principal().tenant

        def read() -> tuple[ConceptRow, bytes]:
            row = self.registry.get(tenant, lookup.token)
            data = self.registry.file_bytes(tenant, lookup.token) if lookup.include_file else b""
            return row, data

        return await asyncio.to_thread(read)

    async def delete_concept(self, lookup: ConceptLookup) -> ConceptRow:
        tenant = managing_tenant("delete concepts")
        return await asyncio.to_thread(self.registry.delete, tenant, lookup.token)

    # --- jobs -------------------------------------------------------------------------------

    async def create_job(self, request: CreateJobRequest) -> JobRow:
        tenant = managing_tenant("create inversion jobs")
        async with self.decodes:  # at most MAX_CONCURRENT_DECODES job uploads decode at once
            return await asyncio.to_thread(
                self.jobs.create,
                request.images,
                request.params(),
                request.skip_register,
                tenant=tenant,
                request_id=request.request_id,
            )

    async def get_job(self, lookup: JobLookup) -> tuple[JobRow, bytes]:
        """The job, and its concept file when asked for and the job has one (else b""): it has once
        the job SUCCEEDED, or FAILED only because its token was taken while it trained."""

        tenant = current_principal().tenant

        def read() -> tuple[JobRow, bytes]:
            row = self.jobs.get(lookup.job_id, tenant)
            wanted = lookup.include_file and row.concept_ready
            return row, self.jobs.concept_file(lookup.job_id, tenant) if wanted else b""

        return await asyncio.to_thread(read)

    async def list_jobs(self, request: ListJobsRequest) -> tuple[list[JobRow], str]:
        """One page of jobs, newest first, and the next page's token ("" on the last page)."""
        start, size = request.page.offset(), request.page.size
        if request.states == ():  # only JOB_STATE_UNSPECIFIED, which matches no job
            return [], ""
        tenant = current_principal().tenant
        rows = await asyncio.to_thread(self.jobs.list, request.states or (), tenant)
        more = start + size < len(rows)
        return rows[start : start + size], encode_page_token(str(start + size)) if more else ""

    async def cancel_job(self, lookup: JobLookup) -> JobRow:
        tenant = managing_tenant("cancel inversion jobs")
        return await asyncio.to_thread(self.jobs.cancel, lookup.job_id, tenant)

    async def find_job(self, lookup: JobLookup) -> JobRow:
        tenant = current_principal().tenant
        return await asyncio.to_thread(self.jobs.get, lookup.job_id, tenant)


def build_service(config: ServerConfig) -> Service:
    """Load the model and backend, open the data folder, and wire the parts together."""
    from textinv_server.loading import load_pipeline

    pipeline, model = load_pipeline(config)
    store = open_store(config.store, config.data_dir)
    try:
        vocabulary = pipeline.host.tokenizer.get_vocab()
        registry = build_registry(store, config, pipeline.host.text_widths, vocabulary)
        jobs = build_jobs(store, registry, config, textinv_trainer(model, config.model), vocabulary)
    except BaseException:
        store.close()
        raise
    batching = config.batching
    batcher: MicroBatcher[PreparedRequest, Outcome] = MicroBatcher(
        lambda batch: pipeline.run_batch(batch),  # looked up per batch: tests may wrap it
        key=lambda prepared: prepared.batch_key(),
        max_batch=batching.max_batch,
        wait_s=batching.batch_wait_ms / 1000,
        max_queue=batching.max_queue,
    )
    device = str(getattr(pipeline.backend, "device", "cpu"))
    return Service(config, pipeline, registry, jobs, batcher, store, device)


def build_registry(
    store: Store, config: ServerConfig, widths: tuple[int, ...], vocabulary: Any
) -> ConceptRegistry:
    return ConceptRegistry(
        store,
        widths=widths,
        vocabulary=vocabulary,
        max_file_bytes=config.limits.max_concept_file_bytes,
        max_concepts=config.limits.max_concepts,
    )


def build_jobs(
    store: Store, registry: ConceptRegistry, config: ServerConfig, train: Any, vocabulary: Any
) -> JobManager:
    """The job manager; it trains here unless the server runs with ``--no-workers``."""
    return JobManager(
        store,
        registry,
        train,
        vocabulary=vocabulary,
        max_concurrent=config.limits.max_concurrent_jobs if config.workers else 0,
        max_queued=config.limits.max_queued_jobs,
        max_images=config.limits.max_images_per_job,
        max_steps=config.limits.max_job_steps,
        max_stored=config.limits.max_stored_jobs,
        retention_s=config.limits.job_retention_seconds,
        max_job_bytes=config.limits.max_job_bytes,
        max_attempts=config.limits.max_job_attempts,
        worker_id=replica_id(),
        lease_s=config.lease_seconds,
    )


@functools.cache
def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a caller may care about (read once per process)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str] = {}
    for name in ("torch", "diffusers", "transformers", "onnx", "onnxruntime", "tensorrt", "grpcio"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
