"""SDXL generation on the torch backend against diffusers' ``StableDiffusionXLPipeline``: two
SDXL concepts in one prompt, loaded into diffusers once per text encoder, the same seeds and
scheduler; with a negative prompt and with an empty one (zeros, as the model says)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
    use_scheduler,
)
from tests.unit.sdxl_reference import (
    registered,
    sdxl_concepts,
    sdxl_reference_pipeline,
)
from textinv.errors import InvalidInputError
from textinv_server.pipeline import GenerationPipeline
from textinv_server.pipeline.generation import load_generation_pipeline
from textinv_server.requests import GenerationRequest, Scheduler

PROMPT = "a photo of <cat-toy> in <dog-style> style on the beach"


@pytest.fixture(scope="module")
def pipeline(tiny_sdxl_model_dir: Path) -> GenerationPipeline:
    return load_generation_pipeline(tiny_sdxl_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_sdxl_model_dir: Path):
    return sdxl_reference_pipeline(tiny_sdxl_model_dir, sdxl_concepts(7))


def request(**overrides) -> GenerationRequest:
    values = {"prompt": PROMPT, "negative_prompt": "blurry", "steps": 4, "seed": 3}
    return GenerationRequest(**{**values, "width": 32, "height": 40, **overrides})


@pytest.mark.parametrize("negative", ["blurry", ""])
@pytest.mark.parametrize("scheduler", [Scheduler.EULER, Scheduler.DDIM])
def test_pixels_match_stable_diffusion_xl(pipeline, reference, scheduler, negative: str) -> None:
    assert pipeline.host.is_sdxl and pipeline.host.family == "sdxl"
    req = request(scheduler=scheduler, negative_prompt=negative, num_images=2)
    result = pipeline(req, registered(sdxl_concepts(7)))
    ours = pixels(result)
    assert ours.shape == (2, 40, 32, 3) and ours.std() > 5
    assert max_pixel_difference(ours, reference_images(reference, result.request)) <= 1
    # The control: the model listens to its text. Other vectors for the concepts move the
    # pixels by far more than the tolerance.
    other = pixels(pipeline(req, registered(sdxl_concepts(8))))
    assert max_pixel_difference(ours, other) > 10


def test_sdxl_requests_share_a_batch(pipeline) -> None:
    concepts = registered(sdxl_concepts(7))
    requests = [request(), request(prompt="a red cat", seed=4, negative_prompt="")]
    prepared = [pipeline.prepare(req, concepts) for req in requests]
    batched = [pixels(r) for r in pipeline.run_batch(prepared)]  # type: ignore[union-attr]
    for req, many in zip(requests, batched, strict=True):
        assert max_pixel_difference(pixels(pipeline(req, concepts)), many) <= 2


def test_concepts_must_fit_the_model(pipeline, tiny_model) -> None:
    one_encoder = {c.token: c.vectors for c in sdxl_concepts(7)}
    with pytest.raises(InvalidInputError, match="needs each concept's vectors for both"):
        pipeline(request(), one_encoder)
    sd1 = load_generation_pipeline(tiny_model)
    with pytest.raises(InvalidInputError, match="SDXL concepts .* need an SDXL model"):
        sd1(request(prompt="a cat"), registered(sdxl_concepts(7)))


@pytest.mark.parametrize("negative", ["blurry", ""])
def test_prompt_2_matches_diffusers(pipeline, reference, negative: str) -> None:
    """diffusers' prompt_2 / negative_prompt_2 go to the second text encoder only."""
    second = {"prompt_2": "a watercolor of <dog-style>", "negative_prompt_2": "dark, grainy"}
    req = request(negative_prompt=negative, **second)
    concepts = registered(sdxl_concepts(7))
    result = pipeline(req, concepts)
    ours = pixels(result)
    assert max_pixel_difference(ours, reference_images(reference, result.request)) <= 1
    # The control: without prompt_2 the second encoder reads the first prompt.
    assert (
        max_pixel_difference(ours, pixels(pipeline(request(negative_prompt=negative), concepts)))
        > 10
    )


def test_prompt_2_needs_sdxl(tiny_model_dir: Path) -> None:
    sd1 = load_generation_pipeline(tiny_model_dir)
    with pytest.raises(InvalidInputError, match="prompt_2 is for SDXL's second text encoder"):
        sd1(GenerationRequest("a cat", prompt_2="a dog", steps=1, width=32, height=32))


def test_a_compiled_sdxl_unet_gives_the_same_image(tiny_sdxl_model_dir: Path, pipeline) -> None:
    """torch.compile takes SDXL's added conditioning (text_embeds, time_ids) too; the "eager"
    compile backend runs dynamo's tracing and guards with no C++ toolchain."""
    from textinv_server.backends import BackendName, BackendOptions, TorchOptions

    options = BackendOptions(torch_options=TorchOptions(compile=True, compile_backend="eager"))
    compiled = load_generation_pipeline(tiny_sdxl_model_dir, BackendName.TORCH, options)
    concepts = registered(sdxl_concepts(7))
    expected = pixels(pipeline(request(), concepts))
    assert max_pixel_difference(pixels(compiled(request(), concepts)), expected) == 0


def test_textinv_generate_takes_an_sdxl_model_and_concept_file(
    tiny_sdxl_model_dir: Path, tmp_path
) -> None:
    from textinv.cli import main
    from textinv.concepts import Concept, ConceptFormat, save_concept

    cat_toy, _ = sdxl_concepts(7)
    sdxl_file = save_concept(cat_toy, tmp_path / "cat.safetensors", ConceptFormat.SDXL)
    out = tmp_path / "x.png"
    argv = ["generate", "--model", str(tiny_sdxl_model_dir), "--prompt", "a <cat-toy>"]
    argv += ["--steps", "2", "--width", "32", "--height", "32", "--out", str(out)]
    assert main([*argv, "--concept", str(sdxl_file)]) == 0 and out.stat().st_size > 0
    sd1_file = save_concept(Concept("<cat-toy>", cat_toy.vectors), tmp_path / "sd1.safetensors")
    with pytest.raises(InvalidInputError, match=r"needs clip_l \(32\) and clip_g \(48\)"):
        from textinv_server.generate_command import load_concepts

        load_concepts((sd1_file,), load_generation_pipeline(tiny_sdxl_model_dir).host)


def test_sdxl_clip_skip_matches_diffusers(pipeline, reference) -> None:
    """diffusers' SDXL clip_skip k takes hidden_states[-(k + 2)] of both encoders (the prompt
    only; its negative prompt stays on the penultimate layer), so guidance is off here."""
    req = request(clip_skip=1, guidance_scale=1.0, negative_prompt="")
    concepts = registered(sdxl_concepts(7))
    ours = pixels(pipeline(req, concepts))

    use_scheduler(reference, req)
    output = reference(
        req.prompt, num_inference_steps=req.steps, guidance_scale=1.0, width=32, height=40,
        generator=torch.Generator("cpu").manual_seed(3), clip_skip=1, output_type="np",
    )  # fmt: skip
    theirs = np.asarray((output.images * 255).round().astype(np.uint8))
    assert max_pixel_difference(ours, theirs) <= 1
    assert max_pixel_difference(ours, pixels(pipeline(replace(req, clip_skip=0), concepts))) > 5
    with pytest.raises(InvalidInputError, match="clip_skip 4 would skip every layer"):
        pipeline(replace(req, clip_skip=4), concepts)


def test_the_sdxl_vae_stays_in_fp32_under_fp16_weights(tiny_sdxl_model_dir: Path) -> None:
    from textinv.model import load_base_model
    from textinv_client.choices import Precision
    from textinv_server.backends import TorchOptions
    from textinv_server.backends.torch_backend import TorchBackend

    backend = TorchBackend(
        load_base_model(tiny_sdxl_model_dir), options=TorchOptions(weights=Precision.FP16)
    )
    assert (backend.dtype, backend.vae_dtype) == (torch.float16, torch.float32)
    latents = torch.randn(1, 4, 8, 8)  # fp32 latents reach the fp32 VAE as they are
    assert torch.isfinite(backend.decode(latents)).all()
