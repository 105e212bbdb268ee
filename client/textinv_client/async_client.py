"""The asyncio textinv client (grpc.aio): the same methods as TextInvClient, awaitable."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from textinv_client import convert
from textinv_client.channel import ClientBase, create_request_id, open_async_channel
from textinv_client.errors import from_rpc_error
from textinv_client.pb.v1 import concepts_pb2, jobs_pb2, server_info_pb2, textinv_pb2_grpc
from textinv_client.types import (
    ConceptInfo,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    InversionParams,
    JobEvent,
    JobInfo,
    JobState,
    ServerInfo,
    TrainingImage,
)

T = TypeVar("T")


class AsyncTextInvClient(ClientBase):
    """asyncio client of a textinv server. Use ``async with``, or await :meth:`close`.

    Create it inside the running event loop. Methods mirror :class:`client.TextInvClient`;
    streaming methods are async iterators.
    """

    def _connect(self) -> None:
        self._channel = open_async_channel(self.settings, self._channel_options)
        self._stub = textinv_pb2_grpc.TextInvStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncTextInvClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- plumbing -------------------------------------------------------------------------------

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return await method(
                request,
                timeout=self.settings.deadline(timeout),
                metadata=self.settings.metadata(),
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    async def _stream(
        self, method: Callable[..., Any], request: Any, deadline: float | None
    ) -> AsyncIterator[Any]:
        call = method(request, timeout=deadline, metadata=self.settings.metadata())
        try:
            async for message in call:
                yield message
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        finally:
            # A consumer that stops early must not leave the call running on the server.
            call.cancel()

    async def _all_pages(
        self,
        method: Callable[..., Any],
        request: Callable[..., Any],
        items: Callable[[Any], Iterable[T]],
        timeout: float | None,
    ) -> list[T]:
        """Call a List RPC page after page (``request(page_token=...)``) until the last one."""
        found: list[T] = []
        page_token = ""
        while True:
            response = await self._unary(method, request(page_token=page_token), timeout)
            found.extend(items(response))
            page_token = response.next_page_token
            if not page_token:
                return found

    # -- generation -----------------------------------------------------------------------------

    async def generate(
        self, request: GenerateRequest, *, timeout: float | None = None
    ) -> GenerateResult:
        """Generate images; ``result.seeds[i]`` is the seed image i was drawn with."""
        response = await self._unary(
            self._stub.Generate, convert.generate_request_to_pb(request), timeout
        )
        return convert.generate_result_from_pb(response)

    async def generate_stream(
        self, request: GenerateRequest, *, timeout: float | None = None
    ) -> AsyncIterator[GenerateEvent]:
        """Yield a GenerateProgress per denoising step, then the GenerateResult."""
        pb_request = convert.generate_request_to_pb(request)
        deadline = self.settings.deadline(timeout)
        async for message in self._stream(self._stub.GenerateStream, pb_request, deadline):
            yield convert.generate_event_from_pb(message)

    # -- concepts -------------------------------------------------------------------------------

    async def register_concept(
        self,
        data: bytes,
        *,
        filename: str = "",
        token: str | None = None,
        replace: bool = False,
        timeout: float | None = None,
    ) -> ConceptInfo:
        """Register a concept file's bytes (any supported format); ``token`` renames it."""
        request = concepts_pb2.RegisterConceptRequest(
            data=data, filename=filename, token=token, replace=replace
        )
        response = await self._unary(self._stub.RegisterConcept, request, timeout)
        return convert.concept_info_from_pb(response.concept)

    async def list_concepts(
        self, *, page_size: int = 0, timeout: float | None = None
    ) -> list[ConceptInfo]:
        """Every registered concept, ordered by token (follows the server's pages)."""
        return await self._all_pages(
            self._stub.ListConcepts,
            functools.partial(concepts_pb2.ListConceptsRequest, page_size=page_size),
            lambda response: map(convert.concept_info_from_pb, response.concepts),
            timeout,
        )

    async def get_concept(self, token: str, *, timeout: float | None = None) -> ConceptInfo:
        """One concept's metadata; NotFound for an unknown token."""
        request = concepts_pb2.GetConceptRequest(token=token)
        response = await self._unary(self._stub.GetConcept, request, timeout)
        return convert.concept_info_from_pb(response.concept)

    async def download_concept(self, token: str, *, timeout: float | None = None) -> bytes:
        """The concept as a diffusers-format safetensors file (load_textual_inversion reads it)."""
        request = concepts_pb2.GetConceptRequest(token=token, include_file=True)
        response = await self._unary(self._stub.GetConcept, request, timeout)
        return bytes(response.file)

    async def delete_concept(self, token: str, *, timeout: float | None = None) -> ConceptInfo:
        """Delete a concept and return what it was; NotFound for an unknown token."""
        request = concepts_pb2.DeleteConceptRequest(token=token)
        response = await self._unary(self._stub.DeleteConcept, request, timeout)
        return convert.concept_info_from_pb(response.concept)

    # -- inversion jobs -------------------------------------------------------------------------

    async def create_inversion_job(
        self,
        images: Iterable[TrainingImage],
        params: InversionParams,
        *,
        register_on_success: bool = True,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> JobInfo:
        """Start learning a concept from ``images``; returns the QUEUED job.

        ``request_id`` is the create's idempotency key (1 to 64 printable ASCII characters; a
        fresh random one when None): the server answers a repeat of it with the job it started
        the first time, so gRPC's retries never start a second job. A caller that retries the
        call itself passes the same ``request_id`` each time.
        """
        key = create_request_id(request_id)
        request = convert.create_job_request_to_pb(images, params, register_on_success)
        request.request_id = key
        response = await self._unary(self._stub.CreateInversionJob, request, timeout)
        return convert.job_info_from_pb(response.job)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """One job's state; NotFound for an unknown job."""
        request = jobs_pb2.GetJobRequest(job_id=job_id)
        response = await self._unary(self._stub.GetJob, request, timeout)
        return convert.job_info_from_pb(response.job)

    async def download_job_concept(self, job_id: str, *, timeout: float | None = None) -> bytes:
        """The concept a job learned (see the sync client); ValueError naming the state if none."""
        request = jobs_pb2.GetJobRequest(job_id=job_id, include_file=True)
        response = await self._unary(self._stub.GetJob, request, timeout)
        return convert.job_file_from_pb(response)

    async def list_jobs(
        self,
        *,
        states: Iterable[JobState] = (),
        page_size: int = 0,
        timeout: float | None = None,
    ) -> list[JobInfo]:
        """Every job (or those in ``states``), newest first (follows the server's pages)."""
        request = functools.partial(
            jobs_pb2.ListJobsRequest, states=convert.job_states_to_pb(states), page_size=page_size
        )
        return await self._all_pages(
            self._stub.ListJobs,
            request,
            lambda response: map(convert.job_info_from_pb, response.jobs),
            timeout,
        )

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> JobInfo:
        """Cancel a job; a finished job is returned unchanged."""
        request = jobs_pb2.CancelJobRequest(job_id=job_id)
        response = await self._unary(self._stub.CancelJob, request, timeout)
        return convert.job_info_from_pb(response.job)

    async def watch_job(
        self, job_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[JobEvent]:
        """Yield the job's JobInfo, a JobProgress per step, and its terminal JobInfo last.

        Unlike other calls, the default is no deadline, since a job runs as long as it runs.
        """
        request = jobs_pb2.WatchJobRequest(job_id=job_id)
        async for message in self._stream(self._stub.WatchJob, request, timeout):
            yield convert.job_event_from_pb(message)

    # -- server ---------------------------------------------------------------------------------

    async def get_server_info(self, *, timeout: float | None = None) -> ServerInfo:
        """The model's identity, the backend, engine profiles, limits and versions."""
        request = server_info_pb2.GetServerInfoRequest()
        response = await self._unary(self._stub.GetServerInfo, request, timeout)
        return convert.server_info_from_pb(response)
