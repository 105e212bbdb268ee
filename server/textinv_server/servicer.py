"""The ``textinv.v1.TextInv`` servicer: each method converts at the edge and calls the service.

Errors are not handled here: ``textinv_server.interceptors.StatusInterceptor`` maps them to status
codes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from textinv import __version__
from textinv.hardware import cpu_features
from textinv.prompts import MAX_LENGTH
from textinv_client.convert import job_progress_to_pb  # the server's JobProgress is the client's
from textinv_client.pb.v1 import (
    concepts_pb2,
    generate_pb2,
    jobs_pb2,
    server_info_pb2,
    textinv_pb2_grpc,
)
from textinv_server import convert
from textinv_server.config import Limits
from textinv_server.jobs import JobProgress
from textinv_server.principal import current_principal
from textinv_server.requests import GenerationRequest
from textinv_server.service import Service, library_versions
from textinv_server.store import JobRow


class TextInvServicer(textinv_pb2_grpc.TextInvServicer):
    def __init__(self, service: Service) -> None:
        self.service = service

    @property
    def limits(self) -> Limits:
        return self.service.limits

    @property
    def _widths(self) -> tuple[int, ...]:
        return self.service.registry.widths

    def _generation_request(self, request: generate_pb2.GenerateRequest) -> GenerationRequest:
        side = self.service.pipeline.host.default_resolution
        return convert.generation_request_from_pb(request, self.limits, side)

    # --- generation -----------------------------------------------------------------------------

    async def Generate(
        self, request: generate_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> generate_pb2.GenerateResponse:
        result, wait_ms = await self.service.generate(self._generation_request(request))
        return convert.generate_response_to_pb(result, wait_ms)

    async def GenerateStream(
        self, request: generate_pb2.GenerateRequest, context: aio.ServicerContext
    ) -> AsyncIterator[generate_pb2.GenerateStreamResponse]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()

        def on_step(progress: Any) -> None:  # called on the generation thread
            loop.call_soon_threadsafe(events.put_nowait, progress)

        checked = self._generation_request(request)
        generation = asyncio.ensure_future(self.service.generate(checked, on_step))
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
        checked = convert.register_concept_from_pb(request, self.limits)
        row = await self.service.register_concept(checked)
        return concepts_pb2.RegisterConceptResponse(
            concept=convert.concept_info_to_pb(row, self._widths)
        )

    async def ListConcepts(
        self, request: concepts_pb2.ListConceptsRequest, context: aio.ServicerContext
    ) -> concepts_pb2.ListConceptsResponse:
        page = convert.concept_page_from_pb(request, self.limits)
        rows, next_token = await self.service.list_concepts(page)
        return concepts_pb2.ListConceptsResponse(
            concepts=[convert.concept_info_to_pb(row, self._widths) for row in rows],
            next_page_token=next_token,
        )

    async def GetConcept(
        self, request: concepts_pb2.GetConceptRequest, context: aio.ServicerContext
    ) -> concepts_pb2.GetConceptResponse:
        lookup = convert.concept_lookup_from_pb(request, self.limits)
        row, data = await self.service.get_concept(lookup)
        return concepts_pb2.GetConceptResponse(
            concept=convert.concept_info_to_pb(row, self._widths), file=data
        )

    async def DeleteConcept(
        self, request: concepts_pb2.DeleteConceptRequest, context: aio.ServicerContext
    ) -> concepts_pb2.DeleteConceptResponse:
        lookup = convert.concept_lookup_from_pb(request, self.limits)
        row = await self.service.delete_concept(lookup)
        return concepts_pb2.DeleteConceptResponse(
            concept=convert.concept_info_to_pb(row, self._widths)
        )

    # --- jobs -----------------------------------------------------------------------------------

    async def CreateInversionJob(
        self, request: jobs_pb2.CreateInversionJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.CreateInversionJobResponse:
        native = self.service.pipeline.host.default_resolution  # an unset resolution's stand-in
        row = await self.service.create_job(
            convert.create_job_from_pb(request, self.limits, native)
        )
        return jobs_pb2.CreateInversionJobResponse(job=convert.job_info_to_pb(row))

    async def GetJob(
        self, request: jobs_pb2.GetJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.GetJobResponse:
        row, data = await self.service.get_job(convert.job_lookup_from_pb(request, self.limits))
        return jobs_pb2.GetJobResponse(job=convert.job_info_to_pb(row), file=data)

    async def ListJobs(
        self, request: jobs_pb2.ListJobsRequest, context: aio.ServicerContext
    ) -> jobs_pb2.ListJobsResponse:
        rows, next_token = await self.service.list_jobs(
            convert.list_jobs_from_pb(request, self.limits)
        )
        return jobs_pb2.ListJobsResponse(
            jobs=[convert.job_info_to_pb(row) for row in rows], next_page_token=next_token
        )

    async def CancelJob(
        self, request: jobs_pb2.CancelJobRequest, context: aio.ServicerContext
    ) -> jobs_pb2.CancelJobResponse:
        row = await self.service.cancel_job(convert.job_lookup_from_pb(request, self.limits))
        return jobs_pb2.CancelJobResponse(job=convert.job_info_to_pb(row))

    async def WatchJob(
        self, request: jobs_pb2.WatchJobRequest, context: aio.ServicerContext
    ) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        lookup = convert.job_lookup_from_pb(request, self.limits)
        jobs = self.service.jobs
        await self.service.find_job(lookup)  # NOT_FOUND before anything is subscribed
        events = jobs.subscribe(lookup.job_id)
        try:
            row = await self.service.find_job(lookup)  # after subscribing: no change is missed
            yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(row))
            while not row.state.is_terminal:
                event = await events.get()
                if isinstance(event, JobProgress):
                    yield jobs_pb2.WatchJobResponse(progress=job_progress_to_pb(event))
                elif isinstance(event, JobRow) and event.state != row.state:
                    row = event
                    yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(row))
        finally:
            jobs.unsubscribe(lookup.job_id, events)

    # --- the server -----------------------------------------------------------------------------

    async def GetServerInfo(
        self, request: server_info_pb2.GetServerInfoRequest, context: aio.ServicerContext
    ) -> server_info_pb2.GetServerInfoResponse:
        service = self.service
        host = service.pipeline.host
        limits, batching = service.limits, service.config.batching
        return server_info_pb2.GetServerInfoResponse(
            model=server_info_pb2.ModelInfo(
                name=host.path.name,  # the folder's name: a server path never reaches a client
                sha256=host.model_hash,
                family=host.family,
                embedding_dim=host.text_width,
                max_prompt_tokens=MAX_LENGTH,
                native_width=host.default_resolution,
                native_height=host.default_resolution,
                prediction_type=str(host.scheduler_config.get("prediction_type", "epsilon")),
                text_encoder_layers=host.text_encoder_layers,
                text_encoder_widths=list(host.text_widths),
            ),
            backend=service.pipeline.backend.name.value,
            device=service.device,
            engine_profiles=convert.engine_profiles_to_pb(
                getattr(service.pipeline.backend, "manifest", None)
            ),
            limits=convert.limits_to_pb(limits, batching),
            schedulers=convert.schedulers_to_pb(),
            server_version=__version__,
            api_version="textinv.v1",
            library_versions=library_versions(),
            precision=service.pipeline.backend.precision.precision.value,
            precision_reason=service.pipeline.backend.precision.reason,
            cpu_instruction_sets=cpu_features().instruction_sets,
            store=service.store.kind,
            replica_id=service.jobs.runs.worker_id,
            tenant=current_principal().tenant,
        )
