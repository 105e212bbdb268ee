"""``sdxl-shape``: SDXL base 1.0's exact configs with random weights, for benchmarks that cannot
download the model. Built on the ``meta`` device here (no memory, no time): its parameter counts
are SDXL base's, and its export profiles are the ones a 1024 px deployment needs."""

from __future__ import annotations

import torch

from textinv_export.export_command import default_resolutions
from textinv_export.specs import Component, ModelDims, Range, ShapeRanges, component_specs

# SDXL base 1.0's parameter counts, per component (diffusers' and transformers' own models).
SDXL_BASE_PARAMETERS = {
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "unet": 2_567_463_684,
    "vae": 83_653_863,
}


def test_sdxl_shape_has_sdxl_base_sizes() -> None:
    from textinv.testing_sdxl import sdxl_shape_model

    with torch.device("meta"):
        model = sdxl_shape_model()
    counts = {
        name: sum(p.numel() for p in getattr(model, name).parameters())
        for name in SDXL_BASE_PARAMETERS
    }
    assert counts == SDXL_BASE_PARAMETERS
    assert model.is_sdxl and model.family == "sdxl" and model.default_resolution == 1024
    assert model.text_widths == (768, 1280) and model.token_embedding.shape == (49408, 768)
    assert model.model_hash == "sdxl-shape-seed0"


def test_sdxl_shape_export_profiles_cover_1024_px() -> None:
    """The TensorRT builder's profiles: 128 × 128 latents at 1024 px (opt), 2048-wide states,
    1280-wide text_embeds and six time ids, at guidance's doubled batch."""
    from textinv.testing_sdxl import sdxl_shape_model

    with torch.device("meta"):
        model = sdxl_shape_model()
    ranges = ShapeRanges(batch=Range(1, 1, 4), resolution=default_resolutions(1024))
    assert ranges.resolution == Range(512, 1024, 1536)
    specs = component_specs(ModelDims.of(model), ranges)
    unet = specs[Component.UNET].profile
    assert unet["sample"].opt == (2, 4, 128, 128) and unet["sample"].max == (8, 4, 192, 192)
    assert unet["text_embeds"].opt == (2, 1280) and unet["time_ids"].opt == (2, 6)
    assert unet["encoder_hidden_states"].opt == (2, 77, 2048)
    assert specs[Component.TEXT_ENCODER_2].profile["inputs_embeds"].opt == (2, 77, 1280)
    assert specs[Component.VAE_DECODER].profile["latents"].opt == (1, 4, 128, 128)
