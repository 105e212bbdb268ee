"""The ``textinv.v1.TextInv`` servicer: each method converts at the edge and calls the service.

Errors are not handled here: ``textinv_server.interceptors.StatusInterceptor`` maps them to status
codes.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from textinv import __version__
from textinv.errors import InvalidInputError
from textinv.prompts import MAX_LENGTH
from textinv_client.pb.v1 import (
    concepts_pb2,
    generate_pb2,
    jobs_pb2,
    server_info_pb2,
    textinv_pb2_grpc,
)
from textinv_server import convert
from textinv_server.jobs import JobProgress
from textinv_server.service import Service, library_versions
from textinv_server.store import JobRow

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class TextInvServicer(textinv_pb2_grpc.TextInvServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    # --- generation -----------------------------------------------------------------------------

    async def Generate(
        self, request: generate_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> generate_pb2.GenerateResponse:
        result, wait_ms = await self.service.generate(convert.generation_request_from_pb(request))
        return convert.generate_response_to_pb(result, wait_ms)

    async def GenerateStream(
        self, request: generate_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[generate_pb2.GenerateStreamResponse]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def on_step(progress: Any) -> None:  # called on the generation thread
            loop.call_soon_threadsafe(events.put_nowait, progress)

        generation = asyncio.ensure_future(
            self.service.generate(convert.generation_request_from_pb(request), on_step)
        )
        try:
            while not generation.done() or not events.empty():
                waiter = asyncio.ensure_future(events.get())
                await asyncio.wait({waiter, generation}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():
                    waiter.cancel()
                    continue
                step = waiter.result()
                yield generate_pb2.GenerateStreamResponse(
                    progress=generate_pb2.GenerateProgress(
                        step=step.step, total_steps=step.total_steps, step_ms=step.step_ms
                    )
                )
            result, wait_ms = generation.result()
            yield generate_pb2.GenerateStreamResponse(
                result=convert.generate_response_to_pb(result, wait_ms)
            )
        finally:
            generation.cancel()  # the caller left: stop its work within one step

    # --- concepts -------------------------------------------------------------------------------

    async def RegisterConcept(
        self, request: concepts_pb2.RegisterConceptRequest, context: aio.ServicerContext
    ) -> concepts_pb2.RegisterConceptResponse:
        row = self.service.registry.register(
            request.data,
            request.filename,
            token=request.token if request.HasField("token") else None,
            replace=request.replace,
        )
        return concepts_pb2.RegisterConceptResponse(concept=convert.concept_info_to_pb(row))

    async def ListConcepts(
        self, request: concepts_pb2.ListConceptsRequest, context: aio.ServicerContext
    ) -> concepts_pb2.ListConceptsResponse:
        size = _page_size(request.page_size)
        rows = self.service.registry.list(
            after=_decode_page_token(request.page_token), limit=size + 1
        )
        next_token = _encode_page_token(rows[size - 1].token) if len(rows) > size else ""
        return concepts_pb2.ListConceptsResponse(
            concepts=[convert.concept_info_to_pb(row) for row in rows[:size]],
            next_page_token=next_token,
        )

    async def GetConcept(
        self, request: concepts_pb2.GetConceptRequest, context: aio.ServicerContext
    ) -> concepts_pb2.GetConceptResponse:
        registry = self.service.registry
        row = registry.get(request.token)
        data = registry.file_bytes(request.token) if request.include_file else b""
        return concepts_pb2.GetConceptResponse(concept=convert.concept_info_to_pb(row), file=data)

    async def DeleteConcept(
        self, request: concepts_pb2.DeleteConceptRequest, context: aio.ServicerContext
    ) -> concepts_pb2.DeleteConceptResponse:
        row = self.service.registry.delete(request.token)
        return concepts_pb2.DeleteConceptResponse(concept=convert.concept_info_to_pb(row))

    # --- jobs -----------------------------------------------------------------------------------

    async def CreateInversionJob(
        self, request: jobs_pb2.CreateInversionJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.CreateInversionJobResponse:
        row = self.service.jobs.create(
            convert.uploaded_images_from_pb(request.images),
            convert.trainer_params_from_pb(request.params),
            request.skip_register,
        )
        return jobs_pb2.CreateInversionJobResponse(job=convert.job_info_to_pb(row))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        jobs = self.service.jobs
        row = jobs.get(request.job_id)
        data = jobs.concept_file(request.job_id) if request.include_file else b""
        return jobs_pb2.GetJobResponse(job=convert.job_info_to_pb(row), file=data)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        states = [convert.job_state_from_pb(value) for value in request.states]
        rows = self.service.jobs.list(states)
        size = _page_size(request.page_size)
        start = _decode_page_offset(request.page_token)
        page = rows[start : start + size]
        more = start + size < len(rows)
        return jobs_pb2.ListJobsResponse(
            jobs=[convert.job_info_to_pb(row) for row in page],
            next_page_token=_encode_page_token(str(start + size)) if more else "",
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        return jobs_pb2.CancelJobResponse(
            job=convert.job_info_to_pb(self.service.jobs.cancel(request.job_id))
        )

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        jobs = self.service.jobs
        events = jobs.subscribe(request.job_id)
        try:
            row = jobs.get(request.job_id)
            yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(row))
            while not row.state.is_terminal:
                event = await events.get()
                if isinstance(event, JobProgress):
                    yield jobs_pb2.WatchJobResponse(progress=convert.job_progress_to_pb(event))
                elif isinstance(event, JobRow) and event.state != row.state:
                    row = event
                    yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(row))
        finally:
            jobs.unsubscribe(request.job_id, events)

    # --- the server -----------------------------------------------------------------------------

    async def GetServerInfo(
        self, request: server_info_pb2.GetServerInfoRequest, context: aio.ServicerContext
    ) -> server_info_pb2.GetServerInfoResponse:
        service = self.service
        host = service.pipeline.host
        limits, batching = service.limits, service.config.batching
        return server_info_pb2.GetServerInfoResponse(
            model=server_info_pb2.ModelInfo(
                name=str(host.path),
                sha256=host.model_hash,
                family="sd2" if host.text_width == 1024 else "sd1",  # OpenCLIP-H vs CLIP-L width
                embedding_dim=host.text_width,
                max_prompt_tokens=MAX_LENGTH,
                native_width=host.default_resolution,
                native_height=host.default_resolution,
                prediction_type=str(host.scheduler_config.get("prediction_type", "epsilon")),
            ),
            backend=service.pipeline.backend.name.value,
            device=service.device,
            engine_profiles=convert.engine_profiles_to_pb(
                getattr(service.pipeline.backend, "manifest", None)
            ),
            limits=server_info_pb2.Limits(
                max_request_bytes=limits.max_request_bytes,
                max_image_pixels=limits.max_image_pixels,
                max_images_per_request=limits.max_images_per_request,
                max_steps=limits.max_steps,
                max_prompt_chars=limits.max_prompt_chars,
                max_concepts_per_prompt=limits.max_concepts_per_prompt,
                max_concept_file_bytes=limits.max_concept_file_bytes,
                max_images_per_job=limits.max_images_per_job,
                max_concurrent_jobs=limits.max_concurrent_jobs,
                max_batch=batching.max_batch,
                batch_wait_ms=int(batching.batch_wait_ms),
                max_queue=batching.max_queue,
            ),
            schedulers=convert.schedulers_to_pb(),
            server_version=__version__,
            api_version="textinv.v1",
            library_versions=library_versions(),
        )


def _page_size(requested: int) -> int:
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode_page_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


def _decode_page_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        raise _foreign_page_token(token) from None


def _decode_page_offset(token: str) -> int:
    """The list offset a page token of ``ListJobs`` carries (0 without a token)."""
    offset = _decode_page_token(token) or "0"
    if not offset.isdigit():
        raise _foreign_page_token(token)
    return int(offset)


def _foreign_page_token(token: str) -> InvalidInputError:
    return InvalidInputError(f"page_token {token!r} is not one this server issued")
