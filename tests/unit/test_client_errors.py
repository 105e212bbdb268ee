"""Each status code the server uses maps to its own exception class."""

from __future__ import annotations

import grpc
import pytest

from textinv_client import errors

TABLE = [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
    (grpc.StatusCode.NOT_FOUND, errors.NotFound),
    (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
    (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
    (grpc.StatusCode.CANCELLED, errors.Cancelled),
    (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
    (grpc.StatusCode.INTERNAL, errors.Internal),
]


class FakeRpcError(grpc.RpcError):
    """What a failed call raises: an RpcError that is also a grpc.Call."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


@pytest.mark.parametrize(("code", "expected"), TABLE, ids=[code.name for code, _ in TABLE])
def test_status_code_maps_to_its_exception(
    code: grpc.StatusCode, expected: type[errors.TextInvError]
) -> None:
    error = errors.from_rpc_error(FakeRpcError(code, "steps 9999 exceeds max_steps 150"))
    assert type(error) is expected
    assert isinstance(error, errors.TextInvError)
    assert error.code is code
    assert error.message == "steps 9999 exceeds max_steps 150"
    assert "steps 9999" in str(error)


def test_table_covers_every_class() -> None:
    assert set(errors.ERROR_BY_CODE.values()) == {cls for _, cls in TABLE}


def test_unlisted_code_keeps_its_code_on_the_base_class() -> None:
    error = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNIMPLEMENTED, "no such rpc"))
    assert type(error) is errors.TextInvError
    assert error.code is grpc.StatusCode.UNIMPLEMENTED


def test_bare_rpc_error_becomes_unknown() -> None:
    error = errors.from_rpc_error(grpc.RpcError("broken"))
    assert type(error) is errors.TextInvError
    assert error.code is grpc.StatusCode.UNKNOWN
    assert error.message == "broken"
