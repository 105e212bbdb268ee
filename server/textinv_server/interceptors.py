"""The two server interceptors: API keys, and the one place where errors become status codes.

Every RPC passes through ``StatusInterceptor``: it gives the call a request id (logged, and sent
back as ``x-request-id`` trailing metadata), times it for the metrics, and maps what the handler
raised to a status code. Only messages written for callers reach them: an unexpected exception is
logged with its traceback and answered ``INTERNAL`` with the request id, nothing more.

``ApiKeyInterceptor`` comes first: it refuses a call without a known key, and runs an accepted
call's behavior, already wrapped by ``StatusInterceptor``, as the key's principal; the status
mapping so sees every error the service raises (``PERMISSION_DENIED`` for a generate-only key).

Refused calls (``UNAUTHENTICATED`` here, ``RESOURCE_EXHAUSTED`` from an ``OverloadedError``) are
counted in ``textinv_refused_calls_total`` by RPC and reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from grpc import aio

from textinv.errors import (
    AlreadyExistsError,
    CancelledError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    StoreUnavailableError,
)
from textinv_client.choices import UnknownChoiceError
from textinv_server import metrics
from textinv_server.keys import KeyEntry, check_unique
from textinv_server.principal import Principal, set_principal

log = logging.getLogger(__name__)

# Each caller-facing error type, and its status code; first match wins.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownChoiceError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (CancelledError, grpc.StatusCode.CANCELLED),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
)
# Health checks must work without a key (load balancers and orchestrators have none).
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and caller-facing message for ``error``; ``None`` if it is a bug."""
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code, str(error)
    return None


def method_name(details: grpc.HandlerCallDetails) -> str:
    """``/textinv.v1.TextInv/Generate`` → ``Generate``: the RPC's label in logs and metrics."""
    return details.method.rsplit("/", 1)[-1]


def refusal_reason(error: BaseException) -> str:
    """The metrics label of a refusal: ``OverloadedError`` → ``overloaded``, a subclass
    ``DiskFullError`` → ``disk_full``. Error types are the server's own, so labels are bounded."""
    name = type(error).__name__.removesuffix("Error") or "refused"
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


Behavior = Callable[[Any, aio.ServicerContext], Any]


class StatusInterceptor(aio.ServerInterceptor):
    """Request ids, latency metrics, and the error → status code mapping, for every RPC."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = method_name(details)
        return wrap_handler(handler, lambda context: _Call(context, method))


# What runs around one call's behavior: entered and left in the call's own task, inside the
# behavior (a coroutine, or an async generator for a stream), so what it sets there (a context
# variable) the behavior sees.
Scope = Callable[[aio.ServicerContext], AbstractAsyncContextManager[Any]]


def wrap_handler(handler: grpc.RpcMethodHandler, scope: Scope) -> grpc.RpcMethodHandler:
    """``handler`` with each call's behavior run inside ``scope(context)``."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary(handler.unary_unary, scope),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _guard_stream(handler.unary_stream, scope),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler  # this service has no client-streaming RPCs


def _guard_unary(behavior: Behavior, scope: Scope) -> Behavior:
    async def guarded(request: Any, context: aio.ServicerContext) -> Any:
        async with scope(context):
            return await behavior(request, context)

    return guarded


def _guard_stream(behavior: Behavior, scope: Scope) -> Behavior:
    if not inspect.isasyncgenfunction(behavior):
        # A coroutine that writes with ``context.write`` (grpc's own Health.Watch): awaited whole.
        return _guard_unary(behavior, scope)

    async def guarded(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        async with scope(context):
            async for response in behavior(request, context):
                yield response

    return guarded


class _Call:
    """What unary and streaming calls share: a request id, the latency, and the error answer."""

    def __init__(self, context: aio.ServicerContext, method: str) -> None:
        self.context, self.method = context, method
        self.code = grpc.StatusCode.OK

    async def __aenter__(self) -> _Call:
        self.request_id = _start(self.context)
        self.started = time.perf_counter()
        return self

    async def __aexit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        try:
            if isinstance(error, asyncio.CancelledError):
                self.code = grpc.StatusCode.CANCELLED  # the caller left or its deadline passed
            elif isinstance(error, Exception):
                self.code, message = _answer(error, self.method, self.request_id)
                if self.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    metrics.count_refusal(self.method, refusal_reason(error))
                await self.context.abort(self.code, message)
        finally:
            _finish(self.method, self.code, self.started, self.request_id)


def _finish(method: str, code: grpc.StatusCode, started: float, request_id: str) -> None:
    """One structured line per call, and its latency in the metrics."""
    seconds = time.perf_counter() - started
    metrics.observe_request(method, code, seconds)
    log.info("rpc=%s code=%s ms=%.1f request_id=%s", method, code.name, seconds * 1000, request_id)


def _start(context: aio.ServicerContext) -> str:
    request_id = uuid.uuid4().hex[:16]
    context.set_trailing_metadata((("x-request-id", request_id),))
    return request_id


def _answer(error: Exception, method: str, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status and message for ``error``; an unexpected one is logged with its traceback."""
    if isinstance(error, aio.AbortError):
        raise error  # an abort already under way passes through
    mapped = status_for(error)
    if mapped is None:
        log.exception("request %s: %s failed", request_id, method)
        return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
    log.info("request %s: %s → %s: %s", request_id, method, mapped[0].name, mapped[1])
    return mapped


class ApiKeyInterceptor(aio.ServerInterceptor):
    """``authorization: Bearer KEY`` on every RPC but health checks; the call then runs as the
    key's principal (its tenant, and whether it may manage: ``textinv_server.principal``).

    Keys are known only by their SHA-256 (``textinv_server.keys``): the presented key is hashed
    and compared with every entry's hash in constant time."""

    def __init__(self, entries: Sequence[KeyEntry]) -> None:
        check_unique(entries, "API keys")
        self._entries = [
            (bytes.fromhex(entry.sha256), Principal(entry.tenant, entry.may_manage))
            for entry in entries
        ]

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.startswith(UNAUTHENTICATED_PREFIXES):
            return await continuation(details)
        principal = self.authenticate(details.invocation_metadata or ())
        handler = await continuation(details)
        if isinstance(principal, Principal):
            # Set in the behavior, not here: this coroutine need not run in the call's task.
            scope = _ActingAs(principal)
            return handler if handler is None else wrap_handler(handler, lambda context: scope)
        # A method the server does not have is "unknown": callers choose method names freely.
        metrics.count_refusal("unknown" if handler is None else method_name(details), principal)
        return _refusal(handler)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | str:
        """The principal of the call's key, or why it is refused: missing_key or invalid_key."""
        value = dict(metadata).get("authorization")
        if value is None:
            return "missing_key"
        presented = (value.decode() if isinstance(value, bytes) else value).encode()
        if not presented.startswith(b"Bearer "):
            return "invalid_key"
        digest = hashlib.sha256(presented[len(b"Bearer ") :]).digest()
        # Compare with every entry, with no early exit, so the time taken says nothing about
        # which entry nearly matched (keys are unique, so at most one matches).
        found: Principal | str = "invalid_key"
        for candidate, principal in self._entries:
            if hmac.compare_digest(digest, candidate):
                found = principal
        return found


class _ActingAs:
    """A call's scope: the behavior runs as ``principal``. Nothing to undo on leaving, since the
    task is the call's own (grpc runs each call in a task of its own)."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    async def __aenter__(self) -> None:
        set_principal(self.principal)

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def _refusal(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    message = "missing or invalid API key: send 'authorization: Bearer <key>' metadata"

    async def refuse_unary(request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def refuse_stream(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # makes this an async generator, as streaming handlers are

    if handler is not None and handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            refuse_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        refuse_unary,
        request_deserializer=None if handler is None else handler.request_deserializer,
        response_serializer=None if handler is None else handler.response_serializer,
    )
