"""Typed exceptions for textinv RPC failures, one per status code the server uses.

Every failed call raises a :class:`TextInvError` subclass carrying the status code and the
server's message, so callers catch ``NotFound`` instead of inspecting ``grpc.RpcError``.
"""

from __future__ import annotations

import grpc


class TextInvError(Exception):
    """A textinv call failed. ``code`` is the gRPC status, ``message`` the server's details."""

    # The status code a subclass stands for; the base class takes whatever code it is given.
    status: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        self.code = code if code is not None else self.status
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)


class InvalidArgument(TextInvError):
    """The request was malformed or outside a limit; the message names the value."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TextInvError):
    """An unknown concept or job."""

    status = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TextInvError):
    """A concept with that token is already registered."""

    status = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(TextInvError):
    """The server is overloaded (queue full) or a message was too large; retry later."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(TextInvError):
    """The API key was missing or wrong."""

    status = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TextInvError):
    """The caller is known but not allowed to do this."""

    status = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(TextInvError):
    """The call's deadline expired before the server finished."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TextInvError):
    """The call was cancelled (by the caller, or by the server shutting down)."""

    status = grpc.StatusCode.CANCELLED


class Unavailable(TextInvError):
    """The server could not be reached or is not serving yet."""

    status = grpc.StatusCode.UNAVAILABLE


class Internal(TextInvError):
    """The server failed unexpectedly; its log holds the details."""

    status = grpc.StatusCode.INTERNAL


# Every subclass above stands for its own status code.
ERROR_BY_CODE: dict[grpc.StatusCode, type[TextInvError]] = {
    cls.status: cls for cls in TextInvError.__subclasses__()
}


def from_rpc_error(error: grpc.RpcError) -> TextInvError:
    """Map a failed call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``) to its exception.

    Codes without a class of their own (UNKNOWN, UNIMPLEMENTED, FAILED_PRECONDITION, ...) become a
    plain :class:`TextInvError` that still carries the code.
    """
    # Failed calls are also grpc.Call objects; a bare RpcError (rare) has neither method.
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else None
    details = details_of() if callable(details_of) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = details if isinstance(details, str) else str(error)
    return ERROR_BY_CODE.get(code, TextInvError)(message, code)
