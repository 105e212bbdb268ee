"""Before the GPU check spends any device time: are the installed protobuf and grpcio new enough?

The generated stubs in ``client/textinv_client/pb/v1/`` check both at import:

- ``*_pb2.py`` call ``_runtime_version.ValidateProtobufRuntimeVersion(domain, major, minor,
  patch, suffix, file)`` with the version of protoc's generator, which raises ``VersionError``
  when the installed runtime is older (same domain);
- ``*_pb2_grpc.py`` compare ``grpc.__version__`` with their ``GRPC_GENERATED_VERSION`` (the
  grpcio-tools that made them) and raise ``RuntimeError`` when grpcio is older.

A GPU machine's image may hold older ones, and the check would then fail late, in its pytest
phase. This reads both versions from the stubs themselves (never a copy) and says what to carry.
``--requirement`` prints the pins that scripts/gpu_check.sh installs from the wheel folder:
protobuf within the stubs' major version (what the check accepts too), grpcio at least the
stubs', and grpcio-health-checking and grpcio-reflection (the server's health and reflection
services) at that same minimum: they are released with grpcio, each release requires
``grpcio>=`` its own version, and their own stubs are made by the same protoc (1.85.1 requires
``protobuf>=7.35.1,<8``, as the stubs here do).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUBS = REPO / "client" / "textinv_client" / "pb" / "v1"
VALIDATOR = "ValidateProtobufRuntimeVersion"
GRPC_CONSTANT = "GRPC_GENERATED_VERSION"
GRPC_COMPANIONS = ("grpcio-health-checking", "grpcio-reflection")  # pinned with grpcio


@dataclass(frozen=True, order=True)
class Version:
    """A ``major.minor.patch`` release; suffixes (``rc1``, ``-dev``) are not compared, as the
    runtime's validator and grpc's ``first_version_is_lower`` compare only the numbers."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def parse(cls, text: str) -> Version:
        """``"7.35.1"`` → 7.35.1; ``"6.31.0rc1"`` → 6.31.0; ``"5.29"`` → 5.29.0."""
        match = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        if match is None:
            raise ValueError(f"not a version: {text!r}")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))


# -- reading the stubs --------------------------------------------------------------------------


def stub_gencode_version(stub: Path) -> Version:
    """The gencode version that ``stub``'s ``ValidateProtobufRuntimeVersion`` call names."""
    tree = ast.parse(stub.read_text(encoding="utf-8"), filename=str(stub))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called_name(node.func) == VALIDATOR:
            if len(node.args) < 4:
                break
            _domain, major, minor, patch = node.args[:4]
            return Version(*(int(ast.literal_eval(part)) for part in (major, minor, patch)))
    raise ValueError(f"{stub}: no {VALIDATOR}(domain, major, minor, patch, ...) call")


def stub_grpc_version(stub: Path) -> Version:
    """The grpcio version a ``*_pb2_grpc.py`` stub needs: its ``GRPC_GENERATED_VERSION = '…'``."""
    tree = ast.parse(stub.read_text(encoding="utf-8"), filename=str(stub))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == GRPC_CONSTANT for target in node.targets
        ):
            return Version.parse(str(ast.literal_eval(node.value)))
    raise ValueError(f"{stub}: no {GRPC_CONSTANT} = '…' assignment")


def required_protobuf(stubs: Path = STUBS) -> tuple[Version, Path]:
    """The newest gencode version over every stub in ``stubs``, and the stub that names it."""
    return _newest(stubs, "*_pb2.py", stub_gencode_version)


def required_grpcio(stubs: Path = STUBS) -> tuple[Version, Path]:
    """The newest ``GRPC_GENERATED_VERSION`` over every gRPC stub, and the stub that names it."""
    return _newest(stubs, "*_pb2_grpc.py", stub_grpc_version)


def _newest(stubs: Path, pattern: str, read: Callable[[Path], Version]) -> tuple[Version, Path]:
    found = [(read(stub), stub) for stub in sorted(stubs.glob(pattern))]
    if not found:
        raise ValueError(f"no {pattern} stubs in {stubs}")
    return max(found)


# -- what is installed, and what to carry -------------------------------------------------------


def installed_protobuf() -> str | None:
    """The version of the protobuf runtime this Python imports, or None without one."""
    try:
        from google.protobuf import __version__
    except ImportError:
        return None
    return str(__version__)


def installed_distribution(name: str) -> str | None:
    """An installed distribution's version (``grpcio``: what ``grpc.__version__`` says), or
    None without it."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def protobuf_requirement(required: Version) -> str:
    """The pip requirement for a runtime the stubs import with, within their major version."""
    return f"protobuf>={required},<{required.major + 1}"


def requirements(stubs: Path = STUBS) -> list[str]:
    """Every pin ``--requirement`` prints, one a line: protobuf, grpcio and its companions."""
    grpcio = required_grpcio(stubs)[0]
    pins = [protobuf_requirement(required_protobuf(stubs)[0]), f"grpcio>={grpcio}"]
    return pins + [f"{name}>={grpcio}" for name in GRPC_COMPANIONS]


def protobuf_problem(installed: str | None, required: Version, stub: Path) -> str | None:
    """Why ``installed`` is outside ``protobuf_requirement(required)`` (and what to carry), or
    None. Older runtimes refuse the stubs; a newer major is outside what grpcio's companions
    declare (``<major + 1``), and outside the pin, so it is refused too."""
    if installed is not None:
        version = Version.parse(installed)
        if required <= version < Version(required.major + 1, 0, 0):
            return None
    have = "no protobuf is installed" if installed is None else f"protobuf {installed} is installed"
    return (
        f"{have}, but the gRPC stubs need {protobuf_requirement(required)} ({_shown(stub)} was "
        f"generated by protobuf {required}: older runtimes refuse to import it, and grpcio's "
        f"companions declare <{required.major + 1}). " + _carry(protobuf_requirement(required))
    )


def grpcio_problem(installed: str | None, required: Version, stub: Path) -> str | None:
    """Why the gRPC stubs would not import with grpcio ``installed`` (what to carry), or None."""
    if installed is not None and Version.parse(installed) >= required:
        return None
    have = "no grpcio is installed" if installed is None else f"grpcio {installed} is installed"
    companions = " and ".join(f"{name}>={required}" for name in GRPC_COMPANIONS)
    return (
        f"{have}, but the gRPC stubs need grpcio>={required} ({_shown(stub)} raises "
        f"RuntimeError at import with an older one). {_carry(f'grpcio>={required}')} "
        f"(and {companions})"
    )


def _carry(wanted: str) -> str:
    return (
        f"Carry a {wanted} wheel in the wheel folder (WHEELS, default .whl), e.g. `python3 -m "
        "pip download --no-deps --only-binary=:all: --python-version 3.12 --platform "
        f"manylinux2014_x86_64 -d .whl '{wanted}'`; scripts/gpu_check.sh installs it first"
    )


def preflight_problem() -> str | None:
    """The check's preflight: None when the installed protobuf and grpcio import the stubs,
    else every problem found, one a line."""
    protobuf, protobuf_stub = required_protobuf()
    grpcio, grpc_stub = required_grpcio()
    problems = [
        protobuf_problem(installed_protobuf(), protobuf, protobuf_stub),
        grpcio_problem(installed_distribution("grpcio"), grpcio, grpc_stub),
    ]
    found = [problem for problem in problems if problem is not None]
    return "\n".join(found) if found else None


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    """``--requirement``: print the pins, one a line (scripts/gpu_check.sh installs them); else
    print the problems, if any, and exit 2 on one."""
    parser = argparse.ArgumentParser(prog="scripts/gpu_check_preflight.py")
    parser.add_argument(
        "--requirement", action="store_true", help="print the protobuf and grpcio pins"
    )
    args = parser.parse_args(argv)
    if args.requirement:
        print("\n".join(requirements()))
        return 0
    problem = preflight_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
