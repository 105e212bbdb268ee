"""The GPU check's preflight: the protobuf runtime and grpcio against the versions the stubs were
made for, read from the stubs, and the pins gpu_check.sh installs."""

from __future__ import annotations

import pytest

from scripts.gpu_check_preflight import (
    STUBS,
    Version,
    grpcio_problem,
    installed_distribution,
    installed_protobuf,
    main,
    preflight_problem,
    protobuf_problem,
    required_grpcio,
    required_protobuf,
    requirements,
    stub_gencode_version,
    stub_grpc_version,
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
# The head of a *_pb2_grpc.py stub as grpcio-tools writes it.
GRPC_STUB = """
import grpc
import warnings

GRPC_GENERATED_VERSION = '1.85.1'
GRPC_VERSION = grpc.__version__
_version_not_supported = False
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
    [("7.35.1", True), ("7.36.0", True), ("7.99.0", True), ("7.35.1rc1", True),
     ("8.0.0", False), ("7.35.0", False), ("7.34.9", False), ("6.99.9", False), ("5.29", False),
     (None, False)],
)  # fmt: skip
def test_the_check_accepts_exactly_what_the_pin_allows(installed, ok) -> None:
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


def test_the_grpc_version_is_read_from_the_stub_s_constant(tmp_path) -> None:
    stub = tmp_path / "x_pb2_grpc.py"
    stub.write_text(GRPC_STUB)
    assert stub_grpc_version(stub) == Version(1, 85, 1)
    (tmp_path / "y_pb2_grpc.py").write_text(GRPC_STUB.replace("1.85.1", "1.86.0"))
    assert required_grpcio(tmp_path) == (Version(1, 86, 0), tmp_path / "y_pb2_grpc.py")
    (tmp_path / "z_pb2_grpc.py").write_text("import grpc\n")
    with pytest.raises(ValueError, match="GRPC_GENERATED_VERSION"):
        stub_grpc_version(tmp_path / "z_pb2_grpc.py")


def test_the_pins_come_from_the_stubs(tmp_path) -> None:
    (tmp_path / "x_pb2.py").write_text(STUB)
    (tmp_path / "x_pb2_grpc.py").write_text(GRPC_STUB.replace("1.85.1", "1.90.2"))
    assert requirements(tmp_path) == [
        "protobuf>=6.31.1,<7",
        "grpcio>=1.90.2",
        "grpcio-health-checking>=1.90.2",
        "grpcio-reflection>=1.90.2",
    ]


def test_the_repository_s_grpc_stubs_agree_and_this_grpcio_passes(capsys) -> None:
    versions = {stub_grpc_version(stub) for stub in STUBS.glob("*_pb2_grpc.py")}
    assert len(versions) == 1
    required, _stub = required_grpcio()
    assert versions == {required}
    installed = installed_distribution("grpcio")
    assert installed is not None and Version.parse(installed) >= required
    import grpc

    assert installed == grpc.__version__  # what the stubs compare
    assert installed_distribution("textinv-no-such-package") is None
    assert main(["--requirement"]) == 0
    assert capsys.readouterr().out.splitlines() == requirements()


@pytest.mark.parametrize(
    ("installed", "ok"),
    [("1.85.1", True), ("1.85.3", True), ("1.90.0", True), ("2.0.0", True), ("1.85.0", False),
     ("1.60.2", False), ("1.85.0rc1", False), (None, False)],
)  # fmt: skip
def test_older_grpcio_is_refused_and_the_message_names_the_wheels(installed, ok) -> None:
    problem = grpcio_problem(installed, Version(1, 85, 1), STUBS / "jobs_pb2_grpc.py")
    if ok:
        assert problem is None
        return
    assert problem is not None
    assert "grpcio>=1.85.1" in problem and ".whl" in problem
    assert "grpcio-health-checking>=1.85.1" in problem
    assert "client/textinv_client/pb/v1/jobs_pb2_grpc.py" in problem
    assert ("no grpcio" in problem) if installed is None else (installed in problem)
