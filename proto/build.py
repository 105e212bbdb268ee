"""Generate the Python stubs of the gRPC contract, or check that the committed ones are current.

``python -m proto.build`` regenerates ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` next to
each ``proto/textinv/v1/*.proto``. ``python -m proto.build --check`` generates into a temporary
folder instead and exits 1, naming each stale, missing or orphaned stub, when the committed stubs
differ from what the .proto files produce.

The .proto files are compiled with the repository root as the include path, so the generated
imports read ``from proto.textinv.v1 import generate_pb2`` and work wherever the top-level
``proto`` package is importable. The stubs are committed because the runtime install has no
grpcio-tools; the check keeps them honest.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "proto" / "textinv" / "v1"
# Suffixes of the files protoc writes for each foo.proto: foo_pb2.py and so on.
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The contract's .proto files, relative to the repository root, in a stable order."""
    files = sorted(PROTO_DIR.glob("*.proto"))
    if not files:
        raise FileNotFoundError(f"no .proto files in {PROTO_DIR}")
    return [path.relative_to(REPO_ROOT) for path in files]


def stub_names(proto: Path) -> list[str]:
    """The stub file names that protoc writes for one .proto file."""
    return [proto.stem + suffix for suffix in STUB_SUFFIXES]


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto file, writing stubs under ``out_root`` (mirroring the repo).

    Returns the written stub paths, relative to ``out_root``.
    """
    # Imported here so that `import proto` never needs grpcio-tools (runtime installs lack it).
    from grpc_tools import protoc

    # google/protobuf/*.proto (Timestamp) ship inside grpc_tools.
    well_known = resources.files("grpc_tools") / "_proto"
    sources = [str(path) for path in proto_files()]
    argv = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(REPO_ROOT / source) for source in sources),
    ]
    status = protoc.main(argv)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} on {', '.join(sources)}")
    return [Path(source).parent / name for source in sources for name in stub_names(Path(source))]


def stale_stubs(generated_root: Path, written: Sequence[Path]) -> list[str]:
    """Describe every committed stub that differs from the freshly generated one."""
    problems = []
    for relative in written:
        committed = REPO_ROOT / relative
        if not committed.exists():
            problems.append(f"{relative}: missing (run `make protos`)")
        elif not filecmp.cmp(committed, generated_root / relative, shallow=False):
            problems.append(f"{relative}: stale (run `make protos`)")
    expected = {REPO_ROOT / relative for relative in written}
    for suffix in STUB_SUFFIXES:
        for orphan in sorted(PROTO_DIR.glob("*" + suffix)):
            if orphan not in expected:
                problems.append(f"{orphan.relative_to(REPO_ROOT)}: no .proto file produces it")
    return problems


def check() -> list[str]:
    """Generate into a temporary folder and compare with the committed stubs."""
    with tempfile.TemporaryDirectory(prefix="textinv-protos-") as tmp:
        written = generate(Path(tmp))
        return stale_stubs(Path(tmp), written)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proto.build", description=__doc__)
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
    for relative in generate(REPO_ROOT):
        print(f"wrote {relative}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
