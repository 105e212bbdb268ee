"""The distributions as a user installs them: the wheels' import names, and the thin client alone.

The wheels are built from a clean copy of the working tree (no build/ or egg-info left over from
an editable install). The client wheel is then installed into an empty virtual environment, with
its dependencies from the package index, and makes real calls, from that environment's own
interpreter and its ``textinv-client`` command, against a real server on a free port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from textinv_server.background import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]
# What the build needs; everything else in the checkout (venvs, caches, outputs) stays behind.
BUILD_INPUTS = ("pyproject.toml", "README.md", "textinv", "export", "server", "client")
# Packages that an app which only calls the server must not get.
HEAVY = {"torch", "numpy", "diffusers", "transformers", "onnxruntime", "onnx", "safetensors"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def run(argv: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, timeout=600, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
    return result


def clean_copy(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    source = clean_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("wheels")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    run([*pip_wheel, "--wheel-dir", out, source / "client", source])
    (client,) = out.glob("textinv_client-*.whl")
    (full,) = out.glob("textinv-[0-9]*.whl")
    return {"textinv-client": client, "textinv": full}


def top_level_names(wheel: Path) -> set[str]:
    """The import names a wheel installs: its top-level folders and modules, metadata aside."""
    with zipfile.ZipFile(wheel) as archive:
        tops = {name.split("/")[0] for name in archive.namelist()}
    return {top.removesuffix(".py") for top in tops if not top.endswith((".dist-info", ".data"))}


def requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_wheels_install_only_names_that_start_with_textinv(wheels: dict[str, Path]) -> None:
    assert top_level_names(wheels["textinv-client"]) == {"textinv_client"}
    assert top_level_names(wheels["textinv"]) == {"textinv", "textinv_export", "textinv_server"}


def test_the_client_needs_grpcio_and_protobuf_only(wheels: dict[str, Path]) -> None:
    required = [req for req in requirements(wheels["textinv-client"]) if "extra ==" not in req]
    assert {re.split("[<>=]", req)[0] for req in required} == {"grpcio", "protobuf"}
    # The full distribution gets the client (and its stubs, and the health probe's extra).
    assert "textinv-client[health]==0.1.0" in requirements(wheels["textinv"])


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Path:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheels["textinv-client"]])
    return venv


def test_the_client_venv_has_nothing_heavy(client_venv: Path) -> None:
    listed = run([client_venv / "bin" / "python", "-m", "pip", "list", "--format=json"])
    installed = {package["name"].lower() for package in json.loads(listed.stdout)}
    assert "textinv-client" in installed
    assert installed & HEAVY == set()
    assert "textinv" not in installed


def test_the_installed_client_calls_a_real_server(
    client_venv: Path, start_textinv: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    server = start_textinv()
    python, command = client_venv / "bin" / "python", client_venv / "bin" / "textinv-client"
    # Outside the checkout, so nothing but the venv's own site-packages can be imported.
    here = {"cwd": tmp_path, "env": {"PATH": str(client_venv / "bin")}}
    # 1. The Python API, from the venv's interpreter.
    code = (
        "import sys, textinv_client\n"
        "from textinv_client import GenerateRequest, TextInvClient\n"
        f"with TextInvClient({server.target!r}) as c:\n"
        "    r = c.generate(GenerateRequest(prompt='a photo of a cat', steps=2, seed=3,"
        " width=32, height=32))\n"
        "    sys.stdout.buffer.write(r.images[0][:8])\n"
        "    print(textinv_client.__file__, file=sys.stderr)\n"
    )
    api = subprocess.run([str(python), "-c", code], capture_output=True, timeout=120, **here)  # type: ignore[call-overload]
    assert api.returncode == 0, api.stderr.decode()[-2000:]
    assert api.stdout == PNG_SIGNATURE
    assert Path(api.stderr.decode().strip()).is_relative_to(client_venv)
    # 2. The command line: generate, concepts and jobs.
    out = tmp_path / "cat.png"
    connect = ["--server", server.target]
    run(
        [
            command,
            "generate",
            *connect,
            "--prompt",
            "a photo of a cat",
            "--steps",
            "2",
            "--width",
            "32",
            "--height",
            "32",
            "--seed",
            "3",
            "--out",
            out,
        ],
        **here,
    )
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    run([command, "concepts", "ls", *connect], **here)
    run([command, "jobs", "ls", *connect], **here)
    # 3. The health probe is an extra: without it, a clear error, not a traceback.
    probe = subprocess.run(
        [str(python), "-m", "textinv_client.health", server.target],
        capture_output=True,
        text=True,
        timeout=60,
        **here,
    )  # type: ignore[call-overload]
    assert probe.returncode == 2
    assert (
        "pip install 'textinv-client[health]'" in probe.stderr and "Traceback" not in probe.stderr
    )
