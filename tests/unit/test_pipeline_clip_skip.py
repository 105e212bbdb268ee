"""clip_skip against diffusers' own option: the prompt embeddings of ``encode_prompt(clip_skip=k)``
and the pixels of ``StableDiffusionPipeline(clip_skip=k)``, on the torch backend and on the
exported text encoder (onnxruntime), with requests of different clip skips in one batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
)
from textinv.errors import InvalidInputError
from textinv_server.backends import ShapeLimits
from textinv_server.pipeline import GenerationPipeline
from textinv_server.pipeline.generation import check_clip_skip
from textinv_server.pipeline.text_encoding import encode_prompts
from textinv_server.requests import GenerationRequest


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": "a red cat on a blue beach",
        "negative_prompt": "blurry",
        "steps": 4,
        "seed": 3,
        "width": 32,
        "height": 32,
    }
    return GenerationRequest(**{**values, **overrides})


def hidden_states(torch_pipeline: GenerationPipeline, req: GenerationRequest) -> torch.Tensor:
    """The prompt's hidden states ``[77, D]`` as the pipeline encodes them."""
    return encode_prompts(torch_pipeline.backend, [torch_pipeline.prepare(req)]).cond[0]


@pytest.mark.parametrize("clip_skip", [1, 2, 4])
def test_prompt_embeddings_match_diffusers_clip_skip(
    torch_pipeline, diffusers_reference, clip_skip: int
) -> None:
    req = request(clip_skip=clip_skip)
    theirs = diffusers_reference.encode_prompt(req.prompt, "cpu", 1, False, clip_skip=clip_skip)[0][
        0
    ]
    ours = hidden_states(torch_pipeline, req)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    # The control: another layer's states are far from these.
    assert (ours - hidden_states(torch_pipeline, request())).abs().max() > 0.1


def both_halves_skipped(diffusers_reference, req: GenerationRequest) -> np.ndarray:
    """diffusers' pixels with ``encode_prompt(clip_skip=k)`` for the prompt and the negative
    prompt alike. Its pipeline skips layers for the prompt only (its negative prompt always
    takes the last layer, a known asymmetry: diffusers PRs 13796 and 13973); Automatic1111 and
    this server skip them for both halves, which classifier-free guidance subtracts."""

    def embed(text: str) -> torch.Tensor:
        return diffusers_reference.encode_prompt(text, "cpu", 1, False, clip_skip=req.clip_skip)[0]

    return reference_images(diffusers_reference, req, embed)


def test_pixels_match_diffusers_clip_skip_without_guidance(
    torch_pipeline, diffusers_reference
) -> None:
    req = request(clip_skip=1, guidance_scale=1.0)
    ours = pixels(torch_pipeline(req))
    assert max_pixel_difference(ours, reference_images(diffusers_reference, req)) <= 1
    # The control: the layer reaches the pixels, by far more than the tolerance.
    assert max_pixel_difference(ours, pixels(torch_pipeline(request(guidance_scale=1.0)))) > 10


def test_both_halves_of_guidance_take_the_clip_skip(torch_pipeline, diffusers_reference) -> None:
    req = request(clip_skip=1)
    ours = pixels(torch_pipeline(req))
    assert max_pixel_difference(ours, both_halves_skipped(diffusers_reference, req)) <= 1
    # The control: diffusers' own pipeline, whose negative half takes the last layer, is another
    # image, so the negative prompt's clip skip is what the comparison above checks.
    assert max_pixel_difference(ours, reference_images(diffusers_reference, req)) > 10


def test_onnxruntime_takes_the_clip_skip(
    onnxruntime_pipeline, torch_pipeline, diffusers_reference
) -> None:
    req = request(clip_skip=2)
    ours = pixels(onnxruntime_pipeline(req))
    assert max_pixel_difference(ours, both_halves_skipped(diffusers_reference, req)) <= 4
    assert max_pixel_difference(ours, pixels(onnxruntime_pipeline(request()))) > 10


def test_requests_with_different_clip_skips_share_a_batch(torch_pipeline) -> None:
    requests = [request(clip_skip=0), request(clip_skip=1, seed=4), request(clip_skip=3, seed=5)]
    prepared = [torch_pipeline.prepare(req) for req in requests]
    assert len({p.batch_key() for p in prepared}) == 1
    batched = [pixels(result) for result in torch_pipeline.run_batch(prepared)]  # type: ignore[arg-type]
    for req, many in zip(requests, batched, strict=True):
        assert max_pixel_difference(pixels(torch_pipeline(req)), many) <= 1


def test_a_clip_skip_that_leaves_no_layer_is_refused(torch_pipeline) -> None:
    layers = torch_pipeline.host.text_encoder_layers  # 5 in the tiny model
    with pytest.raises(InvalidInputError, match=rf"clip_skip {layers} would skip every layer"):
        torch_pipeline(request(clip_skip=layers))
    for bad in (-1, 65, True, 1.5):
        with pytest.raises(InvalidInputError, match="clip_skip must be an integer in 0..64"):
            torch_pipeline(request(clip_skip=bad))


def test_an_export_made_before_clip_skip_refuses_it(tiny_engines_dir: Path) -> None:
    from textinv_export.manifest import read_manifest
    from textinv_export.specs import Component, ComponentSpec
    from textinv_server.backends.exported import text_encoder_inputs

    text = read_manifest(tiny_engines_dir).component(Component.TEXT_ENCODER).spec.to_dict()
    text["inputs"] = [t for t in text["inputs"] if t["name"] != "clip_skip"]  # as exported before
    spec = ComponentSpec.from_dict(text)
    embeds, eos, skip = torch.zeros(1, 77, 32), torch.tensor([3]), torch.tensor([0])
    assert text_encoder_inputs(spec, embeds, eos, skip) == (embeds, eos)
    old = ShapeLimits(takes_clip_skip=False)
    check_clip_skip(0, 5, old)  # the last layer: what the old graph computes
    with pytest.raises(InvalidInputError, match="clip_skip: this export's text encoder takes no"):
        check_clip_skip(1, 5, old)
