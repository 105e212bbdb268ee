"""The generation pipeline on the torch backend, against diffusers' StableDiffusionPipeline."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
    reference_pipeline,
)
from textinv.errors import CancelledError, ConceptFileError, InvalidInputError, UnknownConceptError
from textinv_server.backends import ShapeLimits
from textinv_server.backends.torch_backend import TorchBackend
from textinv_server.host_model import HostModel, load_host_model
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler, StepProgress

SIZE = 32  # pixels; the tiny VAE's factor is 2, so latents are 16 × 16
PROMPT = "a photo of <cat-toy> on the beach"


class CountingBackend(TorchBackend):
    """The real torch backend, recording the batch size of each UNet call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unet_rows: list[int] = []
        self.text_calls = 0

    def encode_text(self, inputs_embeds, eos_positions, clip_skip):
        self.text_calls += 1
        return super().encode_text(inputs_embeds, eos_positions, clip_skip)

    def predict_noise(self, sample, timestep, encoder_hidden_states, added=None):
        self.unet_rows.append(int(sample.shape[0]))
        return super().predict_noise(sample, timestep, encoder_hidden_states, added)


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    width = tiny_model.text_width
    return {
        "<cat-toy>": torch.randn(2, width, generator=generator),  # a 2-vector concept
        "<dog-style>": torch.randn(1, width, generator=generator),
    }


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, concepts, tmp_path_factory):
    return reference_pipeline(tiny_model_dir, concepts, tmp_path_factory.mktemp("concepts"))


@pytest.fixture()
def backend(tiny_model) -> CountingBackend:
    return CountingBackend(tiny_model)


@pytest.fixture()
def pipeline(tiny_model, backend) -> GenerationPipeline:
    return GenerationPipeline(HostModel.of(tiny_model), backend)


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": PROMPT,
        "negative_prompt": "blurry",
        "steps": 3,
        "guidance_scale": 7.5,
        "seed": 1234,
        "width": SIZE,
        "height": SIZE,
        "scheduler": Scheduler.DDIM,
    }
    return GenerationRequest(**{**values, **overrides})


# -- parity with diffusers --------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_matches_diffusers_with_a_two_vector_concept(
    scheduler: Scheduler, pipeline, concepts, reference
) -> None:
    req = request(scheduler=scheduler, width=SIZE + 16)  # non-square: catches swapped axes
    ours = pixels(pipeline(req, concepts))
    theirs = reference_images(reference, req)
    assert ours.shape == (1, SIZE, SIZE + 16, 3)
    assert ours.std() > 5  # an image, not a flat field
    assert max_pixel_difference(ours, theirs) <= 2
    # The control: the model listens to its text. Other vectors for the concept move the pixels
    # by far more than the tolerance, so the parity above covers the spliced rows.
    other = {token: vectors.flip(0).neg() for token, vectors in concepts.items()}
    assert max_pixel_difference(ours, pixels(pipeline(req, other))) > 10  # 13 to 84 here


def test_several_images_match_diffusers_with_one_generator_per_image(
    pipeline, concepts, reference
) -> None:
    # Euler ancestral also draws noise inside step(): the per-image generators must line up.
    req = request(scheduler=Scheduler.EULER_ANCESTRAL, num_images=2, seed=99)
    result = pipeline(req, concepts)
    ours = pixels(result)
    assert result.seeds == (99, 100)
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 2
    assert max_pixel_difference(ours[0], ours[1]) > 10  # two seeds, two images


def test_several_concepts_in_one_prompt_match_diffusers(pipeline, concepts, reference) -> None:
    req = request(prompt="a <cat-toy> toy in <dog-style> style, <cat-toy> again")
    ours = pixels(pipeline(req, concepts))
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 2


def test_guidance_one_skips_the_unconditional_half(pipeline, backend, concepts, reference) -> None:
    req = request(guidance_scale=1.0, num_images=2)
    ours = pixels(pipeline(req, concepts))
    assert backend.unet_rows == [2, 2, 2]  # no uncond rows
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 2


def test_guidance_runs_both_halves_in_one_unet_call(pipeline, backend, concepts) -> None:
    pipeline(request(num_images=2), concepts)
    assert backend.unet_rows == [4, 4, 4]
    assert backend.text_calls == 1


# -- batching -----------------------------------------------------------------------------------


def test_batched_and_unbatched_runs_give_the_same_images(pipeline, backend, concepts) -> None:
    requests = [
        request(scheduler=Scheduler.DPM_SOLVER_PP_2M, seed=5, num_images=2),
        request(scheduler=Scheduler.DPM_SOLVER_PP_2M, seed=6, prompt="a <dog-style> cat"),
        request(scheduler=Scheduler.DPM_SOLVER_PP_2M, seed=7, guidance_scale=3.0),
    ]
    alone = [pixels(pipeline(req, concepts)) for req in requests]
    backend.unet_rows.clear()
    jobs = [pipeline.prepare(req, concepts) for req in requests]
    batched = [pixels(result) for result in pipeline.run_batch(jobs)]  # type: ignore[arg-type]
    assert backend.unet_rows == [8, 8, 8]  # 4 images, both halves, one call per step
    for one, many in zip(alone, batched, strict=True):
        assert max_pixel_difference(one, many) <= 1


def test_requests_that_cannot_share_a_batch_are_refused(pipeline, concepts) -> None:
    jobs = [
        pipeline.prepare(request(steps=3), concepts),
        pipeline.prepare(request(steps=4), concepts),
    ]
    with pytest.raises(InvalidInputError, match="share size, steps"):
        pipeline.run_batch(jobs)


# -- progress, cancellation, timings, seeds ------------------------------------------------------


def test_progress_fires_once_per_step(pipeline, concepts) -> None:
    events: list[StepProgress] = []
    result = pipeline(request(scheduler=Scheduler.PNDM), concepts, on_step=events.append)
    # PNDM without PRK steps evaluates the UNet steps + 1 times.
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert {e.total_steps for e in events} == {4}
    assert len(result.timings.unet_step_ms) == 4
    assert math.isclose(result.timings.unet_total_ms, sum(e.step_ms for e in events))


def test_a_cancelled_request_stops_within_one_step(pipeline, backend, concepts) -> None:
    events: list[StepProgress] = []
    with pytest.raises(CancelledError, match="after 1 of 3 steps"):
        pipeline(request(), concepts, on_step=events.append, is_cancelled=lambda: len(events) >= 1)
    assert len(backend.unet_rows) == 1


def test_cancelling_one_request_leaves_its_batch_mates_unchanged(
    pipeline, backend, concepts
) -> None:
    keep, drop = request(seed=21), request(seed=22)
    alone = pixels(pipeline(keep, concepts))
    backend.unet_rows.clear()
    steps: list[StepProgress] = []
    jobs = [
        pipeline.prepare(keep, concepts),
        pipeline.prepare(drop, concepts, on_step=steps.append, is_cancelled=lambda: bool(steps)),
    ]
    kept, dropped = pipeline.run_batch(jobs)
    assert isinstance(dropped, CancelledError)
    assert backend.unet_rows == [4, 2, 2]  # the cancelled request left after one step
    assert max_pixel_difference(pixels(kept), alone) <= 1  # type: ignore[arg-type]


def test_result_carries_timings_warnings_and_the_seed_it_picked(pipeline, concepts) -> None:
    long_prompt = "a photo of " + "red " * 80 + "<cat-toy>"
    result = pipeline(request(prompt=long_prompt, seed=None), concepts)
    assert result.request.seed is not None and result.seeds == (result.request.seed,)
    assert any("dropped" in warning and "<cat-toy>" in warning for warning in result.warnings)
    timings = result.timings
    assert timings.text_encoder_ms > 0 and timings.vae_decode_ms > 0
    assert len(timings.unet_step_ms) == 3
    assert timings.total_ms >= timings.unet_total_ms + timings.vae_decode_ms
    again = pipeline(replace(result.request), concepts)
    assert np.array_equal(pixels(again), pixels(result))


def test_native_size_is_the_default(pipeline, tiny_model, concepts) -> None:
    result = pipeline(request(width=None, height=None, steps=1), concepts)
    side = tiny_model.default_resolution
    assert pixels(result).shape == (1, side, side, 3)
    assert (result.request.width, result.request.height) == (side, side)


# -- concepts -------------------------------------------------------------------------------------


def test_a_concept_added_between_calls_is_used_with_no_reload(pipeline, concepts) -> None:
    table = {"<cat-toy>": concepts["<cat-toy>"]}
    with pytest.raises(UnknownConceptError, match="<dog-style>"):
        pipeline(request(prompt="a <dog-style> cat"), table)
    table["<dog-style>"] = concepts["<dog-style>"]
    with_concept = pixels(pipeline(request(prompt="a <dog-style> cat"), table))
    table["<dog-style>"] = -concepts["<dog-style>"]  # replaced: the next call sees the new rows
    replaced = pixels(pipeline(request(prompt="a <dog-style> cat"), table))
    assert max_pixel_difference(with_concept, replaced) > 0


def test_unknown_concept_fails_before_any_work(pipeline, backend, concepts) -> None:
    with pytest.raises(UnknownConceptError, match="<cat-tyo>"):
        pipeline(request(prompt="a <cat-tyo> on <cat-toy>"), concepts)
    with pytest.raises(UnknownConceptError, match="<nope>"):
        pipeline(request(negative_prompt="<nope>"), concepts)
    assert backend.text_calls == 0 and backend.unet_rows == []


def test_concept_of_another_width_is_refused_naming_it(pipeline, tiny_model) -> None:
    wrong = {"<wide>": torch.zeros(1, tiny_model.text_width + 1)}
    with pytest.raises(ConceptFileError, match=r"<wide>.*\[1, 33\]"):
        pipeline(request(prompt="a <wide> cat"), wrong)


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"prompt": "   "}, "'   '"),
        ({"width": 30}, "30"),
        ({"height": 0}, "0"),
        ({"steps": 0}, "steps"),
        ({"steps": 10_000}, "10000"),
        ({"guidance_scale": -1.0}, "-1.0"),
        ({"guidance_scale": float("nan")}, "nan"),
        ({"scheduler": "heun"}, "'heun'"),
        ({"seed": -3}, "-3"),
        ({"seed": 2**64}, str(2**64)),
        ({"prompt": "x" * 5000}, "5000 characters"),
        ({"num_images": 9}, "num_images"),
        ({"width": 4096, "height": 4096}, "pixels"),
        ({"num_images": 0}, "num_images"),
    ],
)
def test_bad_requests_are_refused_naming_the_value(
    pipeline, backend, concepts, overrides, named
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        pipeline(request(**overrides), concepts)
    assert named in str(caught.value)
    assert backend.text_calls == 0


def test_seeds_wrap_modulo_two_to_the_64(pipeline, concepts) -> None:
    top = 2**64 - 1
    result = pipeline(request(seed=top, num_images=2), concepts)
    assert result.seeds == (top, 0)
    # Image 1 is the image that seed 0 draws alone: the generator takes every uint64 as is. Not
    # bit for bit: a batch of two runs other CPU kernels than a batch of one (oneDNN on AVX2),
    # which move a pixel by a level or two; another seed moves them by far more (the control).
    alone = pipeline(request(seed=0), concepts)
    other = pipeline(request(seed=1), concepts)
    assert max_pixel_difference(pixels(result)[1], pixels(alone)[0]) <= 2
    assert max_pixel_difference(pixels(other)[0], pixels(alone)[0]) > 20


def test_a_long_bad_value_is_quoted_by_a_short_prefix_only(pipeline, concepts) -> None:
    with pytest.raises(InvalidInputError) as caught:
        pipeline(request(prompt="y" * 100_000), concepts)
    assert len(str(caught.value)) < 200


def test_sizes_outside_the_backend_profile_are_refused(tiny_model, concepts) -> None:
    limits = ShapeLimits(min_size=16, max_size=64, size_multiple=16, max_images=2)
    pipeline = GenerationPipeline(HostModel.of(tiny_model), TorchBackend(tiny_model, limits=limits))
    for overrides, named in [
        ({"width": 128}, "width 128"),
        ({"height": 8}, "height 8"),
        ({"width": 40}, "width 40"),
        ({"num_images": 3}, "3 images"),
    ]:
        with pytest.raises(InvalidInputError, match=named):
            pipeline.prepare(request(**overrides), concepts)


def test_a_backend_for_another_model_is_refused(tiny_model, tmp_path) -> None:
    from textinv.testing import build_tiny_model

    other = load_host_model(build_tiny_model(tmp_path / "other", seed=1))
    with pytest.raises(InvalidInputError, match="not for"):
        GenerationPipeline(other, TorchBackend(tiny_model))


def test_host_model_read_from_the_folder_matches_the_loaded_model(
    tiny_model_dir, tiny_model
) -> None:
    host = load_host_model(tiny_model_dir)
    assert torch.equal(host.token_embedding, tiny_model.token_embedding)
    loaded = HostModel.of(tiny_model)
    for name in ("scheduler_config", "latent_channels", "vae_scale_factor", "latent_scaling"):
        assert getattr(host, name) == getattr(loaded, name), name
    assert (host.default_resolution, host.model_hash) == (64, loaded.model_hash)
