"""The generated stubs are current and importable, and the contract is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import google.protobuf
import pytest

from scripts import protos as build

PROTO_DIR = build.PROTO_ROOT / build.PROTO_PACKAGE
PROTO_FILES = sorted(PROTO_DIR.glob("*.proto"))
# Lines that declare something the contract must document: rpcs, fields, enum values, messages.
DECLARATION = re.compile(
    r"^\s*(rpc \w+|message \w+|enum \w+|service \w+|"
    r"(optional |repeated )?[\w.<>, ]+ \w+ = \d+;)"
)


def test_committed_stubs_are_not_stale() -> None:
    assert build.check() == []


def test_check_names_a_stale_stub(tmp_path: Path) -> None:
    written = build.generate(tmp_path)
    (tmp_path / "generate_pb2.py").write_text("# edited by hand\n")
    problems = build.stale_stubs(tmp_path, written)
    assert problems == ["client/textinv_client/pb/v1/generate_pb2.py: stale (run `make protos`)"]


def test_check_names_a_missing_stub(tmp_path: Path) -> None:
    written = build.generate(tmp_path)
    problems = build.stale_stubs(tmp_path, [*written, "not_there_pb2.py"])
    assert problems == ["client/textinv_client/pb/v1/not_there_pb2.py: missing (run `make protos`)"]


def test_the_contract_compiles_with_plain_protoc_rooted_at_proto(tmp_path: Path) -> None:
    # What a Go, Java or TypeScript team runs: `protoc -I proto proto/textinv/v1/*.proto`, with
    # no include path but proto/ and the well-known types, and imports as protoc wrote them.
    build.compile_contract(tmp_path)
    # The result imports in a fresh interpreter that sees only it and site-packages (-S: no .pth
    # files, so the core `textinv` package cannot shadow the generated `textinv.v1`).
    site_packages = Path(google.protobuf.__file__).parents[2]
    code = (
        "import textinv.v1.textinv_pb2 as m, textinv.v1.textinv_pb2_grpc as g\n"
        "print(m.__file__)\n"
        "print(sorted(m.DESCRIPTOR.services_by_name), hasattr(g, 'TextInvStub'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(site_packages)])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    module_file, services = result.stdout.splitlines()
    assert Path(module_file).is_relative_to(tmp_path)
    assert services == "['TextInv'] True"


def test_the_contract_names_a_package_for_other_languages() -> None:
    for proto_file in PROTO_FILES:
        text = proto_file.read_text()
        for option in ("go_package", "java_package", "java_multiple_files", "csharp_namespace"):
            assert f"option {option} = " in text, (proto_file.name, option)


def test_imports_are_rooted_at_proto() -> None:
    for proto_file in PROTO_FILES:
        imports = re.findall(r'^import "([^"]+)";', proto_file.read_text(), re.MULTILINE)
        assert all(name.startswith(("textinv/v1/", "google/protobuf/")) for name in imports)


def test_check_exit_code() -> None:
    assert build.main(["--check"]) == 0


def test_stubs_import_through_the_proto_package() -> None:
    from textinv_client.pb.v1 import generate_pb2, textinv_pb2, textinv_pb2_grpc

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
    from textinv_client.pb.v1 import generate_pb2, jobs_pb2

    for module in (generate_pb2, jobs_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name


def test_declaration_pattern_sees_the_fields() -> None:
    # Guards the comment check below against a pattern that silently matches nothing.
    text = (PROTO_DIR / "generate.proto").read_text()
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
    # The runtime install has no grpcio-tools; importing the build script must not require it.
    source = Path(build.__file__).read_text()
    assert "\nfrom grpc_tools" not in source and "\nimport grpc_tools" not in source
