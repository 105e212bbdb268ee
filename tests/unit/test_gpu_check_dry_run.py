"""``scripts/gpu_check.sh --dry-run``: the GPU check's whole path on the CPU, results as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_takes_every_phase_and_saves_json(tmp_path) -> None:
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
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dry_run"] is True and results["plan"]["device"] == "cpu"
    phases = results["phases"]
    assert phases["invert"]["status"] == "ok"
    assert phases["invert"]["result"]["speedup"] > 0
    generate = phases["generate_torch"]["result"]
    assert set(generate["runners"]) == {"diffusers", "torch", "torch-compile"}
    assert any("CUDA graphs need a CUDA device" in note for note in generate["notes"])
    assert generate["settings"]["channels_last"] is True
    for row in generate["runners"].values():
        assert set(row) >= {"e2e", "text_encoder", "unet_step", "vae_decode", "speedup_e2e"}
    # No TensorRT on this machine: skipped with the reason, never failed.
    assert phases["tensorrt"]["status"] == "skipped" and phases["tensorrt"]["reason"]
    assert phases["pytest_gpu"]["status"] == "ok"
    assert "skipped" in phases["pytest_gpu"]["result"]["summary"]


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
