"""The time-to-first-image measurement's parts (the quick report runs it end to end), and the
agreed settings that pick what it and the serve bench measure (no timings)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from textinv.cli.bench.report import EMBEDDED_LABEL, agreed_settings
from textinv.cli.bench.report_markdown import startup_rows
from textinv.cli.bench.report_startup import Spawned
from textinv.toy import default_model_path
from textinv_client.choices import Precision

CHILD = "import sys; print('one', flush=True); print('two', flush=True); sys.exit(3)"


def test_a_spawned_process_lines_arrive_in_order_and_its_end_is_an_error(tmp_path: Path) -> None:
    with Spawned([sys.executable, "-c", CHILD], 1, tmp_path / "child.log") as process:
        deadline = time.perf_counter() + 60
        assert process.wait_for("^two$", deadline).group(0) == "two"  # "one" read and passed
        with pytest.raises(RuntimeError, match="exited with 3"):
            process.wait_for("^three$", deadline)
        assert process.elapsed() > 0


def test_a_spawned_process_is_stopped_when_left(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
    with Spawned(sleeper, 0, tmp_path / "sleeper.log") as process:
        process.wait_for("^up$", time.perf_counter() + 60)
        with pytest.raises(TimeoutError, match="never"):
            process.wait_for("never", time.perf_counter() + 0.2)
    assert process.process.poll() is not None


def test_sd15_shape_serves_and_starts_the_embedded_model_labelled_so() -> None:
    settings = agreed_settings("sd15-shape", quick=False, device="cpu", threads=1)
    assert settings.serve.model is None  # ServeBenchSettings: None is the embedded model
    assert settings.serve_label == EMBEDDED_LABEL and "embedded" in EMBEDDED_LABEL
    assert settings.startup.model == str(default_model_path())
    assert settings.startup.label == EMBEDDED_LABEL
    assert settings.startup.steps == settings.serve.steps and settings.startup.threads == 1
    assert settings.invert.precision is Precision.AUTO


def test_a_model_folder_is_served_and_started_itself(tiny_model_dir: Path) -> None:
    settings = agreed_settings(str(tiny_model_dir), quick=False, device="cpu")
    assert settings.serve.model == str(tiny_model_dir) == settings.startup.model
    assert settings.serve_label == "the model"
    assert settings.startup.side == 64  # the tiny UNet's 32 latents × the VAE's factor 2


def test_a_failed_side_is_shown_with_its_error() -> None:
    startup = {
        "settings": {"label": "the model", "model": "m", "steps": 2, "side": 64, "device": "cpu"},
        "textinv": {"status": "ok", "serving_s": 5.0, "first_image_s": 5.5, "precision": "bf16"},
        "diffusers": {"status": "failed", "error": "RuntimeError: exited with 1: no such folder"},
        "first_image_speedup_vs_diffusers": None,
    }
    rows = startup_rows(startup)
    assert rows[0] == ["textinv serve", "5.00 s", "5.50 s", "bf16"]
    assert rows[1][1] == "failed: RuntimeError: exited with 1: no such folder"
