"""Generate the Python stubs of the gRPC contract, or check that the committed ones are current.

``python scripts/protos.py`` compiles ``proto/textinv/v1/*.proto`` the standard way
(``protoc -I proto``, plus the well-known types) and writes ``*_pb2.py``, ``*_pb2.pyi`` and
``*_pb2_grpc.py`` into ``client/textinv_client/pb/v1/``, the package that uses them.
``--check`` generates into a temporary folder instead and exits 1, naming each stale, missing or
orphaned stub, when the committed stubs differ from what the .proto files produce.

protoc writes imports rooted at the include path (``from textinv.v1 import generate_pb2``), which
would name the core ``textinv`` package. As text-generation-inference does, the generated imports
are rewritten to be relative (``from . import generate_pb2``), and the module names that protobuf
records on each message class to the stubs' real import path. The stubs are committed because the
runtime install has no grpcio-tools; the check keeps them honest.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
# The contract's package, as a folder under the include path (`package textinv.v1;`).
PROTO_PACKAGE = Path("textinv") / "v1"
STUB_DIR = REPO_ROOT / "client" / "textinv_client" / "pb" / "v1"
STUB_MODULE = "textinv_client.pb.v1"
# Suffixes of the files protoc writes for each foo.proto: foo_pb2.py and so on.
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# `from textinv.v1 import x_pb2 as y` at the start of a line: protoc's absolute imports.
_ABSOLUTE_IMPORT = re.compile(r"^from textinv\.v1 import ", re.MULTILINE)
# `'textinv.v1.x_pb2'`: the module name protobuf gives each generated message class.
_MODULE_NAME = re.compile(r"'textinv\.v1\.(\w+_pb2)'")


def proto_files() -> list[Path]:
    """The contract's .proto files, relative to ``proto/``, in a stable order."""
    files = sorted((PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files in {PROTO_ROOT / PROTO_PACKAGE}")
    return [path.relative_to(PROTO_ROOT) for path in files]


def stub_names() -> list[str]:
    """The stub file names that protoc writes for the whole contract."""
    return [proto.stem + suffix for proto in proto_files() for suffix in STUB_SUFFIXES]


def compile_contract(out_root: Path, *, python: bool = True) -> None:
    """Run ``protoc -I proto`` over every .proto file, writing under ``out_root/textinv/v1``.

    ``python=False`` only checks that the contract compiles (a descriptor set, no stubs).
    """
    # Imported here so that nothing at run time needs grpcio-tools (runtime installs lack it).
    from grpc_tools import protoc

    # google/protobuf/*.proto (Timestamp) ship inside grpc_tools: the only other include path.
    well_known = resources.files("grpc_tools") / "_proto"
    outputs = (
        [f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}"]
        if python
        else [f"--descriptor_set_out={out_root / 'contract.binpb'}"]
    )
    sources = [str(path) for path in proto_files()]
    status = protoc.main(
        ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *outputs, *sources]
    )
    if status != 0:
        raise RuntimeError(f"protoc -I proto failed with status {status} on {', '.join(sources)}")


def make_package_relative(stub: str) -> str:
    """Rewrite protoc's rooted imports and module names for stubs that live in ``STUB_MODULE``."""
    stub = _ABSOLUTE_IMPORT.sub("from . import ", stub)
    return _MODULE_NAME.sub(rf"'{STUB_MODULE}.\1'", stub)


def generate(stub_dir: Path) -> list[str]:
    """Write the package-relative stubs into ``stub_dir``; returns the file names written."""
    with tempfile.TemporaryDirectory(prefix="textinv-protoc-") as tmp:
        compile_contract(Path(tmp))
        stub_dir.mkdir(parents=True, exist_ok=True)
        for name in stub_names():
            text = (Path(tmp) / PROTO_PACKAGE / name).read_text(encoding="utf-8")
            (stub_dir / name).write_text(make_package_relative(text), encoding="utf-8")
    return stub_names()


def stale_stubs(generated_dir: Path, written: Sequence[str]) -> list[str]:
    """Describe every committed stub that differs from the freshly generated one."""
    problems = []
    for name in written:
        committed = STUB_DIR / name
        shown = committed.relative_to(REPO_ROOT)
        if not committed.exists():
            problems.append(f"{shown}: missing (run `make protos`)")
        elif not filecmp.cmp(committed, generated_dir / name, shallow=False):
            problems.append(f"{shown}: stale (run `make protos`)")
    for suffix in STUB_SUFFIXES:
        for orphan in sorted(STUB_DIR.glob("*" + suffix)):
            if orphan.name not in written:
                problems.append(f"{orphan.relative_to(REPO_ROOT)}: no .proto file produces it")
    return problems


def check() -> list[str]:
    """Generate into a temporary folder and compare with the committed stubs."""
    with tempfile.TemporaryDirectory(prefix="textinv-protos-") as tmp:
        written = generate(Path(tmp))
        return stale_stubs(Path(tmp), written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/protos.py", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed stubs differ from the .proto files",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    for name in generate(STUB_DIR):
        print(f"wrote {(STUB_DIR / name).relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
