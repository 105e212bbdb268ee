"""SD 2.x end to end on a tiny model of its structure (OpenCLIP-style text encoder, linear
projections, v-prediction): prompt embeddings against ``load_textual_inversion``, pixels against
``StableDiffusionPipeline`` on the torch and onnxruntime backends, and inversion with the
v-prediction loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.generation_reference import (
    diffusers_text_states,
    max_pixel_difference,
    pixels,
    reference_images,
    reference_pipeline,
)
from textinv.prompts import PromptEncoder
from textinv.text_encoder import EmbeddingsTextEncoder
from textinv_server.backends.torch_backend import TorchBackend
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler

PROMPT = "a photo of <cat-toy> on the beach"


def concepts_of(width: int, scale: float = 1.0, seed: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"<cat-toy>": torch.randn(2, width, generator=generator) * scale}


@pytest.fixture(scope="module")
def concepts(tiny_sd2_model) -> dict[str, torch.Tensor]:
    return concepts_of(tiny_sd2_model.text_width)


@pytest.fixture(scope="module")
def pipeline(tiny_sd2_model) -> GenerationPipeline:
    return GenerationPipeline(HostModel.of(tiny_sd2_model), TorchBackend(tiny_sd2_model))


@pytest.fixture(scope="module")
def reference(tiny_sd2_model_dir: Path, concepts, tmp_path_factory):
    return reference_pipeline(tiny_sd2_model_dir, concepts, tmp_path_factory.mktemp("sd2"))


def request(**overrides) -> GenerationRequest:
    values = {"prompt": PROMPT, "negative_prompt": "blurry", "steps": 4, "seed": 2}
    return GenerationRequest(**{**values, "width": 32, "height": 32, **overrides})


@pytest.mark.parametrize("prompt", [PROMPT, "<cat-toy>", "a red cat"])
def test_prompt_embeddings_match_load_textual_inversion(
    tiny_sd2_model, reference, concepts, prompt: str
) -> None:
    assert tiny_sd2_model.text_encoder.config.hidden_act == "gelu"
    encoder = PromptEncoder(tiny_sd2_model.tokenizer, tiny_sd2_model.token_embedding)
    embeddings = encoder.embed([prompt], concepts)
    ours, pooled = EmbeddingsTextEncoder(tiny_sd2_model.text_encoder)(
        embeddings.inputs_embeds, embeddings.eos_positions
    )
    theirs = diffusers_text_states(reference, prompt)
    torch.testing.assert_close(ours, theirs.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, theirs.pooler_output, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "scheduler", [Scheduler.DDIM, Scheduler.EULER, Scheduler.DPM_SOLVER_PP_2M, Scheduler.PNDM]
)
def test_v_prediction_pixels_match_diffusers(
    pipeline, reference, concepts, tiny_sd2_model, scheduler: Scheduler
) -> None:
    assert pipeline.host.scheduler_config["prediction_type"] == "v_prediction"
    req = request(scheduler=scheduler)
    ours = pixels(pipeline(req, concepts))
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 1
    # The control: the model listens to its text. Other vectors for the concept move the pixels
    # by far more than the tolerance (54/255 for DDIM).
    other = concepts_of(tiny_sd2_model.text_width, seed=99)
    assert max_pixel_difference(ours, pixels(pipeline(req, other))) > 20


def test_onnxruntime_matches_diffusers(tiny_sd2_model, reference, concepts, tmp_path_factory):
    from textinv_export.exporter import ExportConfig, export_model
    from textinv_export.specs import Range, ShapeRanges
    from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend

    folder = tmp_path_factory.mktemp("sd2-engines")
    ranges = ShapeRanges(batch=Range(1, 1, 2), resolution=Range(32, 32, 32), prompt_chunks=1)
    export_model(tiny_sd2_model, ExportConfig(folder, ranges=ranges), progress=lambda _: None)
    backend = OnnxRuntimeBackend(folder, tiny_sd2_model.model_hash, threads=2)
    exported = GenerationPipeline(HostModel.of(tiny_sd2_model), backend)
    req = request(scheduler=Scheduler.EULER)
    ours = pixels(exported(req, concepts))
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 4
    other = concepts_of(tiny_sd2_model.text_width, seed=99)
    assert max_pixel_difference(ours, pixels(exported(req, other))) > 20


def test_inversion_descends_the_v_prediction_loss(tiny_sd2_model, tiny_sd2_model_dir, tmp_path):
    import torch.nn.functional as F

    from tests.unit.test_trainer import config_for, make_images, snapshot
    from textinv.trainer import prepare

    folder = make_images(tmp_path / "images", 2)
    config = config_for(folder, tmp_path / "out", tiny_sd2_model_dir, steps=3, init="cat")
    before = {name: snapshot(getattr(tiny_sd2_model, name)) for name in ("text_encoder", "unet")}
    trainer = prepare(config, tiny_sd2_model)
    assert trainer.prediction_type == "v_prediction"
    # The loss is the error against diffusers' velocity, recomputed here from its parts.
    batch = trainer.eval_batch
    schedule = trainer.schedule.scheduler
    noisy = schedule.add_noise(batch.latents, batch.noise, batch.timesteps)
    with torch.no_grad():
        text = trainer.text.condition(
            batch.prompts, config.token, (trainer.vectors,), trainer.device
        )
        hidden = text.hidden
        prediction = tiny_sd2_model.unet(
            noisy, batch.timesteps, encoder_hidden_states=hidden
        ).sample
    velocity = schedule.get_velocity(batch.latents, batch.noise, batch.timesteps)
    expected = F.mse_loss(prediction, velocity).item()
    assert trainer.evaluation_loss() == pytest.approx(expected, rel=1e-4)
    # The control: against the noise (ε-prediction) the same prediction scores otherwise.
    assert abs(F.mse_loss(prediction, batch.noise).item() - expected) > 1e-2 * expected
    start = trainer.vectors.detach().clone()
    concept = trainer.train()
    assert concept.vectors.shape == (1, 64) and not torch.equal(concept.vectors, start)
    for name, state in before.items():
        after = getattr(tiny_sd2_model, name).state_dict()
        assert all(torch.equal(value, after[key]) for key, value in state.items()), name


def test_the_family_is_read_from_the_text_encoder(tiny_sd2_model, tiny_sd2_model_dir, tiny_model):
    from textinv_server.host_model import load_host_model

    assert (tiny_sd2_model.family, tiny_model.family) == ("sd2", "sd1")
    host = load_host_model(tiny_sd2_model_dir)
    assert (host.family, host.text_width) == ("sd2", 64)
    assert host.scheduler_config["prediction_type"] == "v_prediction"
