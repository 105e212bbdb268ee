"""``textinv generate`` run locally through the composed command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.cli import main
from textinv.concepts import Concept, load_concept, save_concept
from textinv_server.backends.torch_backend import TorchBackend
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline, decode_png
from textinv_server.requests import GenerationRequest, Scheduler


@pytest.fixture(scope="module")
def concept_file(tiny_model, tmp_path_factory) -> Path:
    vectors = torch.randn(2, tiny_model.text_width, generator=torch.Generator().manual_seed(3))
    return save_concept(
        Concept("<cat-toy>", vectors), tmp_path_factory.mktemp("c") / "cat.safetensors"
    )


def generate(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "generate",
        "--model",
        str(model_dir),
        "--steps",
        "2",
        "--width",
        "32",
        "--height",
        "32",
        "--seed",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def test_writes_numbered_files_that_match_the_library(
    tiny_model_dir, tiny_model, concept_file, tmp_path, capsys
) -> None:
    out = tmp_path / "images" / "cat.png"
    argv = generate(tiny_model_dir, out, "--prompt", "a <cat-toy> on the beach")
    argv += ["--concept", str(concept_file), "--num-images", "2", "--scheduler", "euler"]
    assert main(argv) == 0
    written = [out.with_name("cat-0.png"), out.with_name("cat-1.png")]
    assert all(path.is_file() for path in written) and not out.exists()
    printed = capsys.readouterr().out
    assert "(seed 3)" in printed and "(seed 4)" in printed

    pipeline = GenerationPipeline(HostModel.of(tiny_model), TorchBackend(tiny_model))
    concept = load_concept(concept_file)
    request = GenerationRequest(
        "a <cat-toy> on the beach",
        steps=2,
        seed=3,
        width=32,
        height=32,
        num_images=2,
        scheduler=Scheduler.EULER,
    )
    expected = pipeline(request, {concept.token: concept.vectors})
    for path, png in zip(written, expected.images, strict=True):
        assert np.array_equal(decode_png(path.read_bytes()), decode_png(png))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--prompt", "a <nope> cat"], "unknown concept '<nope>'"),
        (["--prompt", "   "], "prompt must not be empty"),
        (["--prompt", "a cat", "--backend", "onnxruntime"], "needs --engines"),
        (["--prompt", "a cat", "--concept", "/no/such/file.safetensors"], "/no/such/file"),
    ],
)
def test_bad_input_is_one_error_line(tiny_model_dir, tmp_path, capsys, extra, named) -> None:
    assert main(generate(tiny_model_dir, tmp_path / "x.png", *extra)) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_a_concept_of_another_width_is_refused(tiny_model_dir, tmp_path, capsys) -> None:
    wide = save_concept(Concept("<wide>", torch.zeros(1, 48)), tmp_path / "wide.safetensors")
    argv = generate(tiny_model_dir, tmp_path / "x.png", "--prompt", "a <wide> cat")
    assert main([*argv, "--concept", str(wide)]) == 2
    assert "48" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"), [("--width", "30"), ("--scheduler", "heun"), ("--backend", "jax")]
)
def test_argument_errors_name_the_value(tiny_model_dir, tmp_path, capsys, flag, value) -> None:
    argv = generate(tiny_model_dir, tmp_path / "x.png", "--prompt", "a cat")
    with pytest.raises(SystemExit) as exited:
        main([*argv, flag, value])
    assert exited.value.code == 2
    assert value in capsys.readouterr().err


def test_without_model_or_server_it_uses_the_embedded_model(tmp_path) -> None:
    out = tmp_path / "x.png"
    argv = ["generate", "--prompt", "a red star", "--steps", "2", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    assert Image.open(out).size == (32, 32)  # the embedded model's native size


def test_bench_generate_reports_every_runner_and_the_concept_costs(
    tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "generate", "--model", str(tiny_model_dir), "--backends", "torch"]
    argv += ["--steps", "2", "--resolution", "32", "--warmup", "0", "--repeats", "1"]
    assert main([*argv, "--threads", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["runners"]) == {"diffusers", "torch"}
    for row in report["runners"].values():
        assert row["e2e"]["median_ms"] >= row["unet_step"]["median_ms"] > 0
        assert row["speedup_e2e"] > 0
    concepts = report["concepts"]
    assert concepts["backend"] == "torch" and concepts["backend_reloaded"] is False
    assert concepts["first_request_images"] == 1 and concepts["add_concept_ms"] > 0
    assert "diffusers" in capsys.readouterr().out


def test_api_keys_variable_set_but_empty_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from textinv.errors import InvalidInputError
    from textinv_server.serve_command import API_KEYS_ENV, environment_api_keys

    monkeypatch.setenv(API_KEYS_ENV, "a,,b")
    assert environment_api_keys() == ["a", "b"]
    for empty in ("", ","):
        monkeypatch.setenv(API_KEYS_ENV, empty)
        with pytest.raises(InvalidInputError, match=API_KEYS_ENV):
            environment_api_keys()
    monkeypatch.delenv(API_KEYS_ENV)
    assert environment_api_keys() == []
