"""bf16 generation against fp32 on the embedded model: the pixel tolerance bf16 is held to, with a
control that the compared images do depend on what a request asks (issue 15).

bf16 is not bit-exact, so the diffusers-parity tests run in fp32; this states how close bf16 is.
The embedded model is a trained one (random weights amplify per-step differences over a whole
trajectory, which says nothing about bf16 on a real model).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from textinv.model import load_base_model
from textinv_client.choices import Precision
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.pipeline import load_generation_pipeline
from textinv_server.requests import GenerationRequest

# uint8 levels, over 4 images × 32 × 32 × 3: measured 0.54 mean, 4 at the 99th percentile.
MEAN_TOLERANCE = 2.0
P99_TOLERANCE = 16.0
PROMPT = "a yellow circle on a black background"


def images(weights: Precision, seed: int) -> np.ndarray:
    """4 images [4, 32, 32, 3] int16 from the embedded model, the torch backend in ``weights``."""
    options = BackendOptions(torch_options=TorchOptions(weights=weights))
    pipeline = load_generation_pipeline(load_base_model(None), BackendName.TORCH, options)
    assert pipeline.backend.precision.precision is weights
    result = pipeline(GenerationRequest(prompt=PROMPT, steps=20, seed=seed, num_images=4))
    decoded = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in result.images]
    return np.stack(decoded).astype(np.int16)


@pytest.mark.slow
def test_bf16_images_stay_within_the_stated_tolerance_of_fp32() -> None:
    fp32, bf16 = images(Precision.FP32, 0), images(Precision.BF16, 0)
    difference = np.abs(fp32 - bf16)
    assert difference.mean() <= MEAN_TOLERANCE, difference.mean()
    assert np.percentile(difference, 99) <= P99_TOLERANCE
    # Control: another seed moves the same fp32 pixels far past the tolerance, so a bf16 image
    # that ignored its weights' precision entirely (or its seed) could not pass by accident.
    other_seed = np.abs(fp32 - images(Precision.FP32, 1)).mean()
    assert other_seed >= 4 * MEAN_TOLERANCE, other_seed
