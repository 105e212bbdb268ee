"""The command line over a real server: ``textinv generate --server``, ``concepts``, ``jobs``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.cli import main
from textinv.concepts import Concept, save_concept


def test_concepts_generate_and_jobs_through_the_cli(
    textinv_server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ["--server", textinv_server.target]
    concept = save_concept(Concept("<cli-toy>", torch.randn(2, 32)), tmp_path / "c.safetensors")
    assert main(["concepts", "add", str(concept), *server]) == 0
    capsys.readouterr()
    assert main(["concepts", "ls", "--json", *server]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["token"] for c in listed] == ["<cli-toy>"]

    out = tmp_path / "gen.png"
    argv = ["generate", "--prompt", "a <cli-toy>", "--steps", "2", "--seed", "4"]
    argv += ["--width", "32", "--height", "32", "--num-images", "2", "--out", str(out), *server]
    assert main(argv) == 0
    assert Image.open(tmp_path / "gen-0.png").size == (32, 32)
    assert (tmp_path / "gen-1.png").is_file()

    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{index}.png")
    submit = ["jobs", "submit", "--images", str(images), "--token", "<cli-job>", "--init", "toy"]
    assert main([*submit, "--steps", "3", "--seed", "1", "--watch", *server]) == 0
    assert main(["concepts", "rm", "<cli-toy>", *server]) == 0
    capsys.readouterr()
    assert main(["concepts", "ls", "--json", *server]) == 0
    assert [c["token"] for c in json.loads(capsys.readouterr().out)] == ["<cli-job>"]
    assert main(["concepts", "get", "<nobody>", *server]) != 0
    assert "<nobody>" in capsys.readouterr().err
