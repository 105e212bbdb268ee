"""``textinv bench generate`` per batch: warm-up cost, peak memory (None off CUDA) and the pixel
differences between runners, on the tiny model in fp32 on the CPU (where they are exact)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from textinv.cli import main
from textinv.cli.bench.generate import VARIANTS, GenerateBenchSettings, measure_generate
from textinv.cli.bench.generate_runners import Samples, image_difference, round_robin
from textinv_server.backends import BackendName


@pytest.fixture(scope="module")
def report(tiny_model_dir) -> dict:
    settings = GenerateBenchSettings(
        model=str(tiny_model_dir), backends=(BackendName.TORCH,), steps=2, resolution=32, warmup=1,
        repeats=1, threads=1, num_images=(1, 2), compile_backend="eager",
        torch_variants=(VARIANTS["eager"], VARIANTS["compile"], VARIANTS["compile+cuda-graph"]),
        concepts=False,
    )  # fmt: skip
    return measure_generate(settings)


def test_each_batch_is_its_own_round_robin_and_runners_is_the_first(report) -> None:
    assert set(report["batches"]) == {"1", "2"}
    assert [b["num_images"] for b in report["batches"].values()] == [1, 2]
    assert report["runners"] == report["batches"]["1"]["runners"]
    assert report["settings"]["num_images"] == [1, 2]
    assert report["settings"]["compile_backend"] == "eager"
    for batch in report["batches"].values():
        assert set(batch["runners"]) == {"diffusers", "torch", "torch-compile"}
    # compile+cuda-graph needs CUDA: skipped with the reason, not failed.
    assert any(n.startswith("torch-compile-cudagraph: skipped") for n in report["notes"])


def test_rows_hold_first_run_memory_and_pixel_differences(report) -> None:
    for batch in report["batches"].values():
        for row in batch["runners"].values():
            assert row["first_run_ms"] > 0
            assert row["warmup_cost_ms"] == pytest.approx(
                row["first_run_ms"] - row["e2e"]["median_ms"]
            )
            assert row["peak_cuda_mib"] is None and row["peak_cuda_above_start_mib"] is None
            # fp32 on the CPU: ours, compiled or not, draws and computes what diffusers does.
            assert row["max_pixel_diff_vs_diffusers"] <= 1
            assert row["max_pixel_diff_vs_torch"] <= 1
    json.dumps(report)  # plain data: the CLI and the GPU check write it as JSON


def test_the_cli_takes_batches_compile_backend_and_the_new_variant(
    tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "generate", "--model", str(tiny_model_dir), "--backends", "torch"]
    argv += ["--steps", "1", "--resolution", "32", "--warmup", "0", "--repeats", "1"]
    argv += ["--num-images", "1", "2", "--compile-backend", "eager"]
    argv += ["--torch-variants", "eager,compile+cuda-graph", "--threads", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["batches"]) == {"1", "2"}
    printed = capsys.readouterr().out
    assert "2 image(s) per request:" in printed and "torch-compile-cudagraph: skipped" in printed


def test_round_robin_keeps_warmup_runs_apart_and_the_last_images() -> None:
    calls: list[int] = []

    def run(samples: Samples) -> None:
        calls.append(len(calls))
        samples.add(float(len(calls)), 0.0, 0.0, 0.0)
        samples.images = np.full((1, 2, 2, 3), len(calls), np.uint8)

    samples = round_robin({"a": run}, warmup=2, repeats=3)["a"]
    assert samples.warmup_e2e == [1.0, 2.0] and samples.e2e == [3.0, 4.0, 5.0]
    assert samples.images is not None and int(samples.images.max()) == 5
    assert samples.peak_cuda_mib is None  # no CUDA device given


def test_image_difference_is_the_largest_and_mean_level_difference() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 0, 0, 0] = 200
    assert image_difference(a, b) == (200, pytest.approx(200 / a.size))
    assert image_difference(b, a)[0] == 200  # no uint8 wrap-around
    with pytest.raises(ValueError, match="shape"):
        image_difference(a, a[:1])
