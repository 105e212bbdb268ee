"""``python -m textinv_client.health``: the container's health probe, against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from textinv_client.health import main
from textinv_server.background import BackgroundServer
from textinv_server.config import ServerConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    config = ServerConfig(
        model=str(tiny_model_dir), data_dir=tmp_path_factory.mktemp("data"), port=0, warmup=False
    )
    with BackgroundServer(config) as running:
        yield running


def test_a_serving_server_is_healthy(server, capsys) -> None:
    assert main([server.target]) == 0
    assert "SERVING" in capsys.readouterr().out


def test_the_textinv_service_is_reported_too(server) -> None:
    assert main([server.target, "--service", "textinv.v1.TextInv"]) == 0


def test_an_unknown_service_is_unhealthy(server, capsys) -> None:
    assert main([server.target, "--service", "nope.v1.Nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().out


def test_nothing_listening_is_unhealthy(capsys) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed
    assert main([f"127.0.0.1:{port}", "--timeout", "1"]) == 1
    assert "unhealthy" in capsys.readouterr().out


def test_a_bad_target_is_refused_naming_it(capsys) -> None:
    assert main([" 127.0.0.1:1"]) == 2
    assert "' 127.0.0.1:1'" in capsys.readouterr().err


def test_the_probe_imports_without_torch() -> None:
    code = "import sys, textinv_client.health; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
