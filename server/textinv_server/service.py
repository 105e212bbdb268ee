"""Everything the gRPC servicer calls, in plain Python: the runtime behind the micro-batcher, the
concept registry, the job manager and the limits. Built once at start-up by ``build_service``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from textinv_server.batching import MicroBatcher
from textinv_server.config import Limits, ServerConfig
from textinv_server.jobs import JobManager, textinv_trainer
from textinv_server.pipeline import GenerationPipeline, Outcome, PreparedRequest
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
from textinv_server.store import ConceptRow, JobRow, Store

# Job creations (each decodes up to max_images_per_job images) that run at once; more wait.
MAX_CONCURRENT_DECODES = 2


@dataclass
class Service:
    """The servicer's one collaborator. Each method takes a checked request value
    (``textinv_server.convert``) and runs what is CPU- or disk-heavy (parsing, hashing, fsync,
    SQLite, image decoding) on a worker thread, so the event loop keeps answering health checks
    and streams meanwhile."""

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
        def prepare() -> PreparedRequest:
            return self.pipeline.prepare(request, self.registry.snapshot(), on_step=on_step)

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
            token=request.token,
            replace=request.replace,
        )

    async def list_concepts(self, page: Page) -> tuple[list[ConceptRow], str]:
        """One page of concepts and the next page's token ("" on the last page)."""
        rows = await asyncio.to_thread(self.registry.list, page.after(), page.size + 1)
        more = len(rows) > page.size
        return rows[: page.size], encode_page_token(rows[page.size - 1].token) if more else ""

    async def get_concept(self, lookup: ConceptLookup) -> tuple[ConceptRow, bytes]:
        def read() -> tuple[ConceptRow, bytes]:
            row = self.registry.get(lookup.token)
            data = self.registry.file_bytes(lookup.token) if lookup.include_file else b""
            return row, data

        return await asyncio.to_thread(read)

    async def delete_concept(self, lookup: ConceptLookup) -> ConceptRow:
        return await asyncio.to_thread(self.registry.delete, lookup.token)

    # --- jobs -------------------------------------------------------------------------------

    async def create_job(self, request: CreateJobRequest) -> JobRow:
        async with self.decodes:  # at most MAX_CONCURRENT_DECODES job uploads decode at once
            return await asyncio.to_thread(
                self.jobs.create, request.images, request.params(), request.skip_register
            )

    async def get_job(self, lookup: JobLookup) -> tuple[JobRow, bytes]:
        """The job, and its concept file when asked for and the job has one (else b""): it has once
        the job SUCCEEDED, or FAILED only because its token was taken while it trained."""

        def read() -> tuple[JobRow, bytes]:
            row = self.jobs.get(lookup.job_id)
            wanted = lookup.include_file and row.concept_ready
            return row, self.jobs.concept_file(lookup.job_id) if wanted else b""

        return await asyncio.to_thread(read)

    async def list_jobs(self, request: ListJobsRequest) -> tuple[list[JobRow], str]:
        """One page of jobs, newest first, and the next page's token ("" on the last page)."""
        start, size = request.page.offset(), request.page.size
        if request.states == ():  # only JOB_STATE_UNSPECIFIED, which matches no job
            return [], ""
        rows = await asyncio.to_thread(self.jobs.list, request.states or ())
        more = start + size < len(rows)
        return rows[start : start + size], encode_page_token(str(start + size)) if more else ""

    async def cancel_job(self, lookup: JobLookup) -> JobRow:
        return await asyncio.to_thread(self.jobs.cancel, lookup.job_id)

    async def find_job(self, lookup: JobLookup) -> JobRow:
        return await asyncio.to_thread(self.jobs.get, lookup.job_id)


def build_service(config: ServerConfig) -> Service:
    """Load the model and backend, open the data folder, and wire the parts together."""
    from textinv_server.loading import load_pipeline

    pipeline, model = load_pipeline(config)
    store = Store(config.data_dir / "textinv.db")
    vocabulary = pipeline.host.tokenizer.get_vocab()
    registry = ConceptRegistry(
        store,
        config.data_dir / "concepts",
        width=pipeline.host.text_width,
        vocabulary=vocabulary,
        max_file_bytes=config.limits.max_concept_file_bytes,
        max_concepts=config.limits.max_concepts,
    )
    jobs = JobManager(
        store,
        registry,
        config.data_dir / "jobs",
        textinv_trainer(model, config.model),
        vocabulary=vocabulary,
        max_concurrent=config.limits.max_concurrent_jobs,
        max_queued=config.limits.max_queued_jobs,
        max_images=config.limits.max_images_per_job,
        max_steps=config.limits.max_job_steps,
        max_stored=config.limits.max_stored_jobs,
        retention_s=config.limits.job_retention_seconds,
        max_job_bytes=config.limits.max_job_bytes,
        max_attempts=config.limits.max_job_attempts,
    )
    batching = config.batching
    batcher: MicroBatcher[PreparedRequest, Outcome] = MicroBatcher(
        lambda batch: pipeline.run_batch(batch),  # looked up per batch: tests may wrap it
        key=lambda prepared: prepared.request.batch_key(),
        max_batch=batching.max_batch,
        wait_s=batching.batch_wait_ms / 1000,
        max_queue=batching.max_queue,
    )
    device = str(getattr(pipeline.backend, "device", "cpu"))
    return Service(config, pipeline, registry, jobs, batcher, store, device)


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
