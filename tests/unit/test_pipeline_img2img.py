"""img2img against diffusers' ``StableDiffusionImg2ImgPipeline`` (same seeds, strength and
scheduler) on the torch backend and on the exported VAE encoder (onnxruntime); requests of
different strengths, and text-to-image ones, in one batch; the init image checked as job images
are."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.hostile_payloads import png_bomb
from tests.unit.generation_reference import max_pixel_difference, pixels, reference_images
from textinv.errors import InvalidInputError
from textinv_export.manifest import read_manifest
from textinv_export.specs import Component
from textinv_server.backends.exported import shape_limits
from textinv_server.backends.torch_backend import TorchBackend
from textinv_server.config import Limits
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler, StepProgress


def picture(side: int = 32, *, flipped: bool = False) -> bytes:
    """A PNG with structure the VAE keeps: a colour gradient and a square."""
    y, x = np.mgrid[0:side, 0:side] / side
    rgb = np.stack([x, y, 1 - x], axis=-1)
    rgb[side // 4 : side // 2, side // 4 : side // 2] = (1.0, 0.9, 0.1)
    if flipped:
        rgb = 1 - rgb[::-1]
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": "a red cat on a blue beach",
        "negative_prompt": "blurry",
        "steps": 10,
        "seed": 8,
        "init_image": picture(),
        "strength": 0.6,
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize(
    "scheduler", [Scheduler.DDIM, Scheduler.EULER, Scheduler.DPM_SOLVER_PP_2M_SDE]
)
def test_img2img_matches_diffusers(torch_pipeline, diffusers_reference, scheduler) -> None:
    req = request(scheduler=scheduler, num_images=2)
    result = torch_pipeline(req)
    ours = pixels(result)
    assert ours.shape == (2, 32, 32, 3)  # the init image's size
    assert max_pixel_difference(ours, reference_images(diffusers_reference, result.request)) <= 1
    # The control: the init image reaches the pixels, by far more than the tolerance.
    other = pixels(
        torch_pipeline(request(scheduler=scheduler, num_images=2, init_image=picture(flipped=True)))
    )
    assert max_pixel_difference(ours, other) > 8


def test_onnxruntime_img2img_matches_diffusers(onnxruntime_pipeline, diffusers_reference) -> None:
    assert onnxruntime_pipeline.backend.limits.takes_init_image
    result = onnxruntime_pipeline(request(strength=0.8))
    ours = pixels(result)
    assert max_pixel_difference(ours, reference_images(diffusers_reference, result.request)) <= 4
    other = pixels(onnxruntime_pipeline(request(strength=0.8, init_image=picture(flipped=True))))
    assert max_pixel_difference(ours, other) > 8


def test_strengths_and_text_to_image_share_a_batch(torch_pipeline) -> None:
    steps: dict[int, list[StepProgress]] = {0: [], 1: [], 2: []}
    requests = [
        request(strength=0.3),
        request(strength=0.9, seed=9, prompt="a green dog"),
        request(init_image=None, strength=None, width=32, height=32, seed=10),
    ]
    prepared = [
        torch_pipeline.prepare(req, on_step=steps[i].append) for i, req in enumerate(requests)
    ]
    assert len({p.batch_key() for p in prepared}) == 1
    batched = [pixels(result) for result in torch_pipeline.run_batch(prepared)]  # type: ignore[arg-type]
    # Each joins at its strength's first step: 3, 9 and 10 of the 10 steps, counted from 1.
    assert [[p.step for p in steps[i]] for i in range(3)] == [
        [1, 2, 3],
        list(range(1, 10)),
        list(range(1, 11)),
    ]
    assert {p.total_steps for p in steps[0]} == {3}
    # Alone, each runs at another UNet batch size, whose kernels round differently (2/255).
    for req, many in zip(requests, batched, strict=True):
        assert max_pixel_difference(pixels(torch_pipeline(req)), many) <= 2


def test_a_set_size_resizes_the_init_image(torch_pipeline, diffusers_reference) -> None:
    result = torch_pipeline(request(init_image=picture(64), width=32, height=40))
    assert pixels(result).shape == (1, 40, 32, 3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"init_image": None}, "strength applies to img2img: send an init_image too"),
        ({"strength": 0.0}, r"strength must be in \(0, 1\], got 0.0"),
        ({"strength": 1.5}, r"strength must be in \(0, 1\], got 1.5"),
        ({"strength": float("nan")}, r"strength must be in \(0, 1\], got nan"),
        ({"steps": 2, "strength": 0.3}, "strength 0.3 of 2 steps runs no step"),
        ({"init_image": b""}, "init_image must be the bytes of a PNG, JPEG or WebP file"),
        ({"init_image": b"GIF89a not allowed"}, "'init_image': not a readable image"),
        ({"init_image": png_bomb(3000, 3000)}, "'init_image': image is 3000×3000 px"),
        ({"init_image": png_bomb(100_000, 100_000)}, "'init_image': image is too large"),
        ({"init_image": picture(4)}, "each side must be at least 8 px"),
    ],
)
def test_bad_img2img_fields_name_the_field(torch_pipeline, overrides, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        torch_pipeline(request(**overrides))


def test_an_init_image_over_the_output_limit_needs_a_size(torch_pipeline) -> None:
    small = Limits(max_image_pixels=32 * 32)
    with pytest.raises(InvalidInputError, match="init_image is 64×64 px.*set a smaller width"):
        torch_pipeline(request(init_image=picture(64)), limits=small)
    assert pixels(
        torch_pipeline(request(init_image=picture(64), width=32, height=32), limits=small)
    ).shape == (1, 32, 32, 3)


def test_a_backend_without_a_vae_encoder_refuses_img2img(
    tiny_model, tiny_engines_dir: Path
) -> None:
    manifest = read_manifest(tiny_engines_dir)
    assert shape_limits(manifest).takes_init_image
    assert not shape_limits(manifest.without_component(Component.VAE_ENCODER)).takes_init_image
    backend = TorchBackend(tiny_model)
    backend.limits = replace(backend.limits, takes_init_image=False)
    pipeline = GenerationPipeline(HostModel.of(tiny_model), backend)
    with pytest.raises(InvalidInputError, match="init_image: this export has no vae_encoder"):
        pipeline(request())
