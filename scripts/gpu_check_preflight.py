"""Before the GPU check spends any device time: is the installed protobuf new enough?

The generated gRPC stubs (``client/textinv_client/pb/v1/*_pb2.py``) call
``_runtime_version.ValidateProtobufRuntimeVersion(domain, major, minor, patch, suffix, file)``
at import with the version of protoc's generator, and that call raises ``VersionError`` when the
installed runtime is older (it must be at least that version; same domain). A GPU machine's image
may hold an older protobuf, and the check would then fail late, in its pytest phase. This reads
the version from the stubs themselves (never a copy of it) and says what to carry;
``--requirement`` prints the pin that scripts/gpu_check.sh installs from the wheel folder.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUBS = REPO / "client" / "textinv_client" / "pb" / "v1"
VALIDATOR = "ValidateProtobufRuntimeVersion"


@dataclass(frozen=True, order=True)
class Version:
    """A ``major.minor.patch`` release; suffixes (``rc1``, ``-dev``) are not compared, as the
    runtime's validator compares only the three numbers."""

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


def required_protobuf(stubs: Path = STUBS) -> tuple[Version, Path]:
    """The newest gencode version over every stub in ``stubs``, and the stub that names it."""
    found = [(stub_gencode_version(stub), stub) for stub in sorted(stubs.glob("*_pb2.py"))]
    if not found:
        raise ValueError(f"no *_pb2.py stubs in {stubs}")
    return max(found)


def installed_protobuf() -> str | None:
    """The version of the protobuf runtime this Python imports, or None without one."""
    try:
        from google.protobuf import __version__
    except ImportError:
        return None
    return str(__version__)


def requirement(required: Version) -> str:
    """The pip requirement for a runtime the stubs import with (within their major version)."""
    return f"protobuf>={required},<{required.major + 1}"


def protobuf_problem(installed: str | None, required: Version, stub: Path) -> str | None:
    """Why the stubs would not import with ``installed`` (and what to carry), or None."""
    if installed is not None and Version.parse(installed) >= required:
        return None
    have = "no protobuf is installed" if installed is None else f"protobuf {installed} is installed"
    wanted = requirement(required)
    return (
        f"{have}, but the gRPC stubs need at least {required} ({_shown(stub)} was generated for "
        f"it; older runtimes refuse to import it). Carry a {wanted} wheel in the wheel folder "
        f"(WHEELS, default .whl), e.g. `python3 -m pip download --no-deps --only-binary=:all: "
        f"--python-version 3.12 --platform manylinux2014_x86_64 -d .whl '{wanted}'`; "
        "scripts/gpu_check.sh installs it first"
    )


def preflight_problem() -> str | None:
    """The check's one preflight: None when the installed protobuf can import the stubs."""
    required, stub = required_protobuf()
    return protobuf_problem(installed_protobuf(), required, stub)


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    """``--requirement``: print the pip requirement (scripts/gpu_check.sh installs it); else
    print the problem, if any, and exit 2 on one."""
    parser = argparse.ArgumentParser(prog="scripts/gpu_check_preflight.py")
    parser.add_argument("--requirement", action="store_true", help="print the protobuf pin")
    args = parser.parse_args(argv)
    if args.requirement:
        print(requirement(required_protobuf()[0]))
        return 0
    problem = preflight_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
