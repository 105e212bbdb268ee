"""The GPU check's preflight: the protobuf runtime against the version the stubs were made for."""

from __future__ import annotations

import pytest

from scripts.gpu_check_preflight import (
    STUBS,
    Version,
    installed_protobuf,
    preflight_problem,
    protobuf_problem,
    required_protobuf,
    stub_gencode_version,
)

STUB = """
from google.protobuf import runtime_version as _runtime_version
_runtime_version.ValidateProtobufRuntimeVersion(
    _runtime_version.Domain.PUBLIC,
    6,
    31,
    1,
    '',
    'textinv/v1/x.proto'
)
"""


def test_the_version_is_read_from_the_stub_s_validator_call(tmp_path) -> None:
    stub = tmp_path / "x_pb2.py"
    stub.write_text(STUB)
    assert stub_gencode_version(stub) == Version(6, 31, 1)
    (tmp_path / "y_pb2.py").write_text(STUB.replace("31,", "32,"))
    assert required_protobuf(tmp_path) == (Version(6, 32, 1), tmp_path / "y_pb2.py")


def test_a_stub_without_the_call_is_an_error(tmp_path) -> None:
    stub = tmp_path / "x_pb2.py"
    stub.write_text("from google.protobuf import descriptor\n")
    with pytest.raises(ValueError, match="ValidateProtobufRuntimeVersion"):
        stub_gencode_version(stub)
    with pytest.raises(ValueError, match="no \\*_pb2.py"):
        required_protobuf(tmp_path / "empty")


def test_the_repository_s_stubs_agree_and_this_environment_passes() -> None:
    versions = {stub_gencode_version(stub) for stub in STUBS.glob("*_pb2.py")}
    assert len(versions) == 1  # one protoc made them all
    required, _stub = required_protobuf()
    assert versions == {required}
    installed = installed_protobuf()
    assert installed is not None and Version.parse(installed) >= required
    assert preflight_problem() is None


@pytest.mark.parametrize(
    ("installed", "ok"),
    [("7.35.1", True), ("7.36.0", True), ("8.0.0", True), ("7.35.0", False),
     ("7.34.9", False), ("6.99.9", False), ("7.35.1rc1", True), ("5.29", False), (None, False)],
)  # fmt: skip
def test_older_runtimes_are_refused_and_the_message_names_the_wheel(installed, ok) -> None:
    problem = protobuf_problem(installed, Version(7, 35, 1), STUBS / "jobs_pb2.py")
    if ok:
        assert problem is None
        return
    assert problem is not None
    assert "protobuf>=7.35.1,<8" in problem and ".whl" in problem
    assert "client/textinv_client/pb/v1/jobs_pb2.py" in problem
    assert ("no protobuf" in problem) if installed is None else (installed in problem)


def test_version_parsing() -> None:
    assert Version.parse("6.31.0rc1") == Version(6, 31, 0)
    assert str(Version.parse(" 7.35.1 ")) == "7.35.1"
    with pytest.raises(ValueError, match="not a version"):
        Version.parse("dev")
