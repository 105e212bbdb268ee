"""``scripts/gpu_check.sh --dry-run``: the GPU check's whole path on the CPU, results as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PHASES = ["plan", "generate_batch1", "invert", "pytest_gpu", "generate_batch2", "tensorrt"]
ROW_FIELDS = {
    "status", "e2e", "text_encoder", "unet_step", "vae_decode", "speedup_e2e",
    "speedup_unet_step", "first_run_ms", "warmup_cost_ms", "peak_cuda_mib",
    "peak_cuda_above_start_mib", "device_used_mib", "max_pixel_diff_vs_torch",
    "mean_pixel_diff_vs_torch", "max_pixel_diff_vs_diffusers", "mean_pixel_diff_vs_diffusers",
    "unet_call_relative_error_vs_eager",
}  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("dry-run")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(tmp_path / "no-wheels"),  # nothing to install here
        "OUT": str(tmp_path / "out"),
    }
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved: dict = json.loads((tmp_path / "out" / "results.json").read_text())
    return saved


@pytest.mark.slow
def test_dry_run_takes_every_phase_in_order_and_saves_json(results) -> None:
    assert results["dry_run"] is True and results["plan"]["device"] == "cpu"
    assert results["status"] == "complete" and results["wall_s"] > 0
    assert list(results["phases"]) == PHASES
    phases = results["phases"]
    # No TensorRT on this machine: skipped with the reason, never failed.
    assert phases["tensorrt"]["status"] == "skipped" and phases["tensorrt"]["reason"]
    assert phases["pytest_gpu"]["status"] == "ok"
    tests = phases["pytest_gpu"]["result"]
    # A dry run hides CUDA from pytest, also where there is some: all skipped, and fine here.
    assert "skipped" in tests["summary"]
    assert tests["counts"]["tests"] == tests["counts"]["skipped"] > 0


@pytest.mark.slow
def test_each_batch_measures_warmup_memory_and_pixel_differences(results) -> None:
    for phase, images in (("generate_batch1", 1), ("generate_batch2", 2)):
        assert results["phases"][phase]["status"] == "ok"
        generate = results["phases"][phase]["result"]
        assert generate["num_images"] == images
        assert set(generate["runners"]) == {"diffusers", "torch", "torch-compile"}
        for variant in ("torch-cudagraph", "torch-compile-cudagraph"):
            note = f"{variant}: skipped (CUDA graphs need a CUDA device)"
            assert note in generate["notes"]
        settings = generate["settings"]
        assert settings["channels_last"] is True and settings["compile_backend"] == "eager"
        for row in generate["runners"].values():
            assert set(row) >= ROW_FIELDS and row["status"] == "ok"
            assert row["first_run_ms"] > 0
            assert row["peak_cuda_mib"] is None and row["device_used_mib"] is None  # off CUDA
            assert row["max_pixel_diff_vs_diffusers"] <= 1  # fp32 on the CPU
        # The one-call UNet check, compiled (dynamo, "eager" backend) and eager against eager.
        runners = generate["runners"]
        assert runners["diffusers"]["unet_call_relative_error_vs_eager"] is None
        for name in ("torch", "torch-compile"):
            assert runners[name]["unet_call_relative_error_vs_eager"] == pytest.approx(0, abs=1e-6)
        assert any(
            note.startswith("unet_call_relative_error_vs_eager") for note in generate["notes"]
        )


@pytest.mark.slow
def test_invert_reports_memory_and_the_1000_step_estimate(results) -> None:
    invert = results["phases"]["invert"]["result"]
    assert invert["speedup"] > 0 and invert["peak_cuda_ratio"] is None  # off CUDA
    for method in ("textinv", "reference"):
        row = invert[method]
        warmup = row["step_s"][: invert["warmup_steps"]]
        rest = 1000 - len(warmup)
        expected = row["load_s"] + row["setup_s"] + sum(warmup) + rest * row["median_step_s"]
        assert row["estimated_1000_steps_s"] == pytest.approx(expected)
        assert invert["estimated_1000_steps_s"][method] == row["estimated_1000_steps_s"]


def test_without_cuda_and_without_dry_run_it_says_so(tmp_path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode != 0
    assert "no CUDA device; run with --dry-run" in done.stderr
