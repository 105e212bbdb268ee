"""Everything the gRPC servicer calls, in plain Python: the runtime behind the micro-batcher, the
concept registry, the job manager and the limits. Built once at start-up by ``build_service``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from textinv.errors import InvalidInputError
from textinv.prompts import PLACEHOLDER
from textinv_server.batching import BatchItem, MicroBatcher
from textinv_server.config import Limits, ServerConfig
from textinv_server.jobs import JobManager, textinv_trainer
from textinv_server.pipeline import GenerationJob, GenerationPipeline, Outcome, PreparedRequest
from textinv_server.registry import ConceptRegistry
from textinv_server.requests import GenerationRequest, GenerationResult, StepProgress
from textinv_server.store import Store


@dataclass
class Service:
    config: ServerConfig
    pipeline: GenerationPipeline
    registry: ConceptRegistry
    jobs: JobManager
    batcher: MicroBatcher[PreparedRequest, Outcome]
    store: Store
    device: str

    @property
    def limits(self) -> Limits:
        return self.config.limits

    async def generate(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepProgress], None] | None = None,
    ) -> tuple[GenerationResult, float]:
        """Check, queue and run one request; return its result and its queue wait in ms."""
        self.check_limits(request)
        # Every error the request can cause (sizes, unknown concepts, ...) is raised here, at
        # arrival, before it takes a place in the queue.
        prepared = self.pipeline.prepare(request, self.registry.snapshot())
        arrived = time.perf_counter()
        result = await self.batcher.submit(prepared, on_step)
        if not isinstance(result, GenerationResult):  # the request was cancelled mid-way
            raise result
        wait_ms = max((time.perf_counter() - arrived) * 1000 - result.timings.total_ms, 0.0)
        return result, wait_ms

    def check_limits(self, request: GenerationRequest) -> None:
        limits = self.limits
        if len(request.prompt) > limits.max_prompt_chars:
            raise InvalidInputError(
                f"prompt is {len(request.prompt)} characters; the limit is "
                f"{limits.max_prompt_chars}"
            )
        if len(request.negative_prompt) > limits.max_prompt_chars:
            raise InvalidInputError(
                f"negative_prompt is {len(request.negative_prompt)} characters; the limit is "
                f"{limits.max_prompt_chars}"
            )
        if request.num_images > limits.max_images_per_request:
            raise InvalidInputError(
                f"num_images {request.num_images} exceeds the limit of "
                f"{limits.max_images_per_request}"
            )
        if request.steps > limits.max_steps:
            raise InvalidInputError(
                f"steps {request.steps} exceeds the limit of {limits.max_steps}"
            )
        side = self.pipeline.host.default_resolution
        pixels = (request.width or side) * (request.height or side)
        if pixels > limits.max_image_pixels:
            raise InvalidInputError(
                f"{request.width}×{request.height} is {pixels} pixels; the limit is "
                f"{limits.max_image_pixels}"
            )
        named = set(PLACEHOLDER.findall(request.prompt + " " + request.negative_prompt))
        if len(named) > limits.max_concepts_per_prompt:
            raise InvalidInputError(
                f"the prompts name {len(named)} concepts; the limit is "
                f"{limits.max_concepts_per_prompt}"
            )


def run_prepared_batch(
    pipeline: GenerationPipeline,
) -> Callable[[Sequence[BatchItem[PreparedRequest]]], list[Outcome]]:
    """The batcher's runner: each queued item becomes a job of one ``run_batch`` call."""

    def run(items: Sequence[BatchItem[PreparedRequest]]) -> list[Outcome]:
        jobs = [
            GenerationJob(item.request, on_step=item.progress, is_cancelled=item.cancelled)
            for item in items
        ]
        return pipeline.run_batch(jobs)

    return run


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
    )
    batching = config.batching
    batcher: MicroBatcher[PreparedRequest, Outcome] = MicroBatcher(
        run_prepared_batch(pipeline),
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
