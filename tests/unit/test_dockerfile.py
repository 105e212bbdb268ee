"""The Dockerfile parses, every path it copies exists (and survives .dockerignore), and the
instructions the deployment relies on are there. No Docker engine runs here; this is a parser of
the documented syntax: comments, parser directives, line continuations, exec (JSON) forms."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


@dataclass(frozen=True)
class Instruction:
    name: str
    value: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array form (``["a", "b"]``); fails the test if it is the shell form."""
        parsed = json.loads(self.value)
        assert isinstance(parsed, list), f"line {self.line}: {self.name} is not exec form"
        return [str(item) for item in parsed]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; continuation lines joined, comments and directives dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are dropped
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        name, _, value = (pending + line).partition(" ")
        if name.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {name!r}")
        instructions.append(Instruction(name.upper(), value.strip(), start))
        pending, start = "", 0
    if pending:
        raise ValueError("the Dockerfile ends inside a continued line")
    return instructions


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's matching (Go's filepath.Match from the context root, plus ``**``): ``*`` stays
    within one folder, ``**/`` spans any number of them. Unlike .gitignore, ``*.pyc`` matches
    at the root only."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """The last matching pattern wins and ``!`` re-includes; a folder's match covers its files."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def named(instructions: list[Instruction], name: str) -> list[Instruction]:
    return [i for i in instructions if i.name == name]


def copy_sources(instruction: Instruction) -> list[str]:
    words = [w for w in shlex.split(instruction.value) if not w.startswith("--")]
    return words[:-1]  # the last word is the destination


def test_parser_refuses_an_unknown_instruction() -> None:
    with pytest.raises(ValueError, match="'FORM'"):
        parse_dockerfile("FORM ubuntu\n")


def test_every_copied_path_exists_and_is_in_the_build_context(
    instructions, ignore_patterns
) -> None:
    local = [i for i in named(instructions, "COPY") if "--from=" not in i.value]
    assert local, "no COPY from the build context"
    for instruction in local:
        for source in copy_sources(instruction):
            path = REPO / source
            assert path.exists(), f"line {instruction.line}: COPY {source}: no such path"
            assert not ignored(source.rstrip("/"), ignore_patterns), f"{source} is dockerignored"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                # Build output of the editable install (client/*.egg-info) is not source.
                if "__pycache__" not in relative and ".egg-info" not in relative:
                    assert not ignored(relative, ignore_patterns), f"{relative} is dockerignored"


def test_copied_packages_cover_every_package_of_the_wheel(instructions) -> None:
    copied = {s.rstrip("/") for i in named(instructions, "COPY") for s in copy_sources(i)}
    assert {"pyproject.toml", "textinv", "export", "server", "client", "proto"} <= copied


def test_multi_stage_on_an_nvidia_base(instructions) -> None:
    stages = named(instructions, "FROM")
    assert len(stages) >= 2
    assert any("--from=build" in i.value for i in named(instructions, "COPY"))
    args = {i.value.split("=", 1)[0]: i.value.split("=", 1)[1] for i in named(instructions, "ARG")}
    assert args["BASE_IMAGE"].startswith("nvcr.io/nvidia/")


def test_builds_the_stubs_and_installs_the_gpu_extra(instructions) -> None:
    runs = " ".join(i.value for i in named(instructions, "RUN"))
    assert "python3 scripts/protos.py" in runs
    assert "[gpu]" in runs


def test_runs_textinv_serve_as_a_non_root_user(instructions) -> None:
    users = named(instructions, "USER")
    assert users and users[-1].value not in ("root", "0")
    (entrypoint,) = named(instructions, "ENTRYPOINT")
    assert entrypoint.line > users[-1].line
    assert entrypoint.exec_form() == ["textinv", "serve"]


def test_ports_health_check_and_volumes_agree(instructions) -> None:
    (cmd,) = named(instructions, "CMD")
    args = cmd.exec_form()
    flags = dict(zip(args[::2], args[1::2], strict=True))
    exposed = {port for i in named(instructions, "EXPOSE") for port in i.value.split()}
    assert {flags["--port"], flags["--metrics-port"]} == exposed == {"50051", "9090"}
    assert flags["--host"] == "0.0.0.0"
    (health,) = named(instructions, "HEALTHCHECK")
    probe = json.loads(health.value.split("CMD", 1)[1])
    assert probe[:3] == ["python3", "-m", "textinv_client.health"]
    assert probe[3] == f"127.0.0.1:{flags['--port']}"
    assert (REPO / "client" / "textinv_client" / "health.py").is_file()
    volumes = {v for i in named(instructions, "VOLUME") for v in i.exec_form()}
    assert {flags["--data"], "/engines"} <= volumes


def test_dockerignore_keeps_secrets_and_the_venv_out(ignore_patterns) -> None:
    for path in (
        ".venv/bin/python",
        ".git/config",
        "certs/server.key",
        "server/textinv_server/__pycache__/a.pyc",
    ):
        assert ignored(path, ignore_patterns), path
    for path in (
        "textinv/toy/model.safetensors",
        "server/textinv_server/app.py",
        "proto/textinv/v1/jobs.proto",
        "scripts/protos.py",
    ):
        assert not ignored(path, ignore_patterns), path


def test_ignore_matching_follows_docker_not_gitignore() -> None:
    assert ignored("a.pyc", ["*.pyc"]) and not ignored("pkg/a.pyc", ["*.pyc"])
    assert ignored("pkg/deep/a.pyc", ["**/*.pyc"])
    assert not ignored("keep.onnx", ["*.onnx", "!keep.onnx"])
