"""The generated stubs are current and importable, and the contract is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proto import build

PROTO_FILES = sorted(build.PROTO_DIR.glob("*.proto"))
# Lines that declare something the contract must document: rpcs, fields, enum values, messages.
DECLARATION = re.compile(
    r"^\s*(rpc \w+|message \w+|enum \w+|service \w+|"
    r"(optional |repeated )?[\w.<>, ]+ \w+ = \d+;)"
)


def test_committed_stubs_are_not_stale() -> None:
    assert build.check() == []


def test_check_names_a_stale_stub(tmp_path: Path) -> None:
    written = build.generate(tmp_path)
    tampered = next(path for path in written if path.name == "generate_pb2.py")
    (tmp_path / tampered).write_text("# edited by hand\n")
    problems = build.stale_stubs(tmp_path, written)
    assert problems == [f"{tampered}: stale (run `make protos`)"]


def test_check_names_a_missing_stub(tmp_path: Path) -> None:
    written = build.generate(tmp_path)
    missing = Path("proto/textinv/v1/not_there_pb2.py")
    problems = build.stale_stubs(tmp_path, [*written, missing])
    assert problems == [f"{missing}: missing (run `make protos`)"]


def test_check_exit_code() -> None:
    assert build.main(["--check"]) == 0


def test_stubs_import_through_the_proto_package() -> None:
    from proto.textinv.v1 import generate_pb2, textinv_pb2, textinv_pb2_grpc

    service = textinv_pb2.DESCRIPTOR.services_by_name["TextInv"]
    assert service.full_name == "textinv.v1.TextInv"
    assert {method.name for method in service.methods} == {
        "Generate",
        "GenerateStream",
        "RegisterConcept",
        "ListConcepts",
        "GetConcept",
        "DeleteConcept",
        "CreateInversionJob",
        "GetJob",
        "ListJobs",
        "CancelJob",
        "WatchJob",
        "GetServerInfo",
    }
    assert hasattr(textinv_pb2_grpc, "TextInvServicer")
    assert generate_pb2.GenerateRequest(seed=0).HasField("seed")


def test_enum_zero_values_are_unspecified() -> None:
    from proto.textinv.v1 import generate_pb2, jobs_pb2

    for module in (generate_pb2, jobs_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name


def test_declaration_pattern_sees_the_fields() -> None:
    # Guards the comment check below against a pattern that silently matches nothing.
    text = (build.PROTO_DIR / "generate.proto").read_text()
    matched = [line for line in text.splitlines() if DECLARATION.match(line)]
    assert "  optional uint64 seed = 5;" in matched
    assert "  rpc Generate(GenerateRequest) returns (GenerateResponse);" not in matched
    assert len(matched) > 30


@pytest.mark.parametrize("proto_file", PROTO_FILES, ids=lambda path: path.name)
def test_every_declaration_has_a_comment(proto_file: Path) -> None:
    lines = proto_file.read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        if not DECLARATION.match(line) or line.strip().startswith("//"):
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("//"):
            undocumented.append(f"{proto_file.name}:{number + 1}: {line.strip()}")
    assert undocumented == []


def test_protoc_is_not_needed_to_import_the_build_module() -> None:
    # The runtime install has no grpcio-tools; `import proto.build` must not require it.
    source = Path(build.__file__).read_text()
    assert "\nfrom grpc_tools" not in source and "\nimport grpc_tools" not in source
