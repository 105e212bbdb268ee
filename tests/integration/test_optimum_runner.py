"""optimum-onnx's pipeline in its own venv, driven by ``OptimumRunner`` on the tiny model.

Skipped unless optimum's venv is already there: building it takes minutes and a package index,
which CI has neither of, so the test never builds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from textinv.cli.bench.optimum_peer import (
    OPTIMUM_PINS,
    PYTHON_ENV,
    OptimumRunner,
    complete_optimum_python,
    optimum_venv_dir,
)

PYTHON = complete_optimum_python()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PYTHON is None,
        reason=f"needs optimum's venv, never built by tests (minutes, a package index; not in "
        f"CI): set {PYTHON_ENV} to a python with {', '.join(OPTIMUM_PINS)}, or build "
        f"{optimum_venv_dir()} once with textinv.cli.bench.optimum_peer.ensure_optimum_python()",
    ),
]
PROMPT = "a photo of a cat"


def test_optimum_generates_the_same_pixels_for_the_same_seed(tiny_model_dir: Path) -> None:
    assert PYTHON is not None
    config = json.loads((tiny_model_dir / "scheduler/scheduler_config.json").read_text())
    with OptimumRunner(PYTHON, tiny_model_dir, scheduler_config=config) as runner:
        first = runner.generate(PROMPT, 2, 7.5, 64, 64, seed=0)
        again = runner.generate(PROMPT, 2, 7.5, 64, 64, seed=0)
        info = runner.info
    assert first.images.shape == (1, 64, 64, 3) and first.images.dtype == np.uint8
    assert first.e2e_ms > 0 and first.round_trip_ms >= first.e2e_ms
    assert len(first.unet_step_ms) == 2
    assert np.array_equal(first.images, again.images)
    assert info.versions["optimum-onnx"] == "0.1.0" and info.export_s > 0
    assert info.scheduler_config["_class_name"] == "DDIMScheduler"


def test_optimum_draws_diffusers_noise_and_reads_our_text_encoder(
    tiny_model: Any, tiny_model_dir: Path
) -> None:
    """Same seeds, scheduler and steps as diffusers' pipeline over our modules: the same images
    within 2 uint8 levels (1 seen). Text encoder weights left at random would differ widely."""
    from textinv.cli.bench.generate_runners import diffusers_pipeline
    from textinv_client.choices import Scheduler

    assert PYTHON is not None
    reference = diffusers_pipeline(tiny_model, Scheduler.DDIM)
    output = reference(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=7.5,
        width=32,
        height=32,
        num_images_per_prompt=2,
        generator=[torch.Generator("cpu").manual_seed(seed) for seed in (5, 6)],
    )
    expected = np.stack([np.asarray(image.convert("RGB")) for image in output.images])
    config = dict(tiny_model.scheduler_config)
    with OptimumRunner(PYTHON, tiny_model_dir, scheduler_config=config) as runner:
        got = runner.generate(PROMPT, 2, 7.5, 32, 32, seed=5, num_images=2)
    difference = np.abs(got.images.astype(np.int16) - expected.astype(np.int16))
    assert int(difference.max()) <= 2
