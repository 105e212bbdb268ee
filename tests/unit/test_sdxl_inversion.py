"""SDXL inversion: both vector sets learn together, conditioned as diffusers' SDXL pipeline
conditions (both encoders' penultimate states, the pooled projection, and ``time_ids`` from each
training crop); frozen weights stay bit-identical; resume is exact; the concept file is SDXL's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.unit.sdxl_reference import sdxl_reference_pipeline
from tests.unit.test_trainer import config_for, make_images, snapshot
from textinv.concepts import Concept, ConceptFormat, load_concept
from textinv.testing_sdxl import TINY_SDXL_WIDTHS
from textinv.trainer import invert, prepare

CAPTION = "a photo of {} on a table"
RESOLUTION = 32


@pytest.fixture(scope="module")
def sdxl_model(tiny_sdxl_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_sdxl_model_dir)


@pytest.fixture(scope="module")
def captioned_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 88×72 images, each captioned, so every training prompt is one known text."""
    folder = make_images(tmp_path_factory.mktemp("sdxl-images"), 2)
    for image in folder.glob("*.png"):
        image.with_suffix(".txt").write_text(CAPTION)
    return folder


def sdxl_config(images: Path, out: Path, model_dir: Path, **changes):  # -> InvertConfig
    values = {"resolution": RESOLUTION, "vectors": 2, "init": "cat", **changes}
    return config_for(images, out, model_dir, **values)


def test_the_loss_is_diffusers_sdxl_conditioning(
    sdxl_model, tiny_sdxl_model_dir, captioned_images, tmp_path
) -> None:
    config = sdxl_config(captioned_images, tmp_path / "out", tiny_sdxl_model_dir)
    trainer = prepare(config, sdxl_model)
    assert [tuple(v.shape) for v in trainer.vector_sets] == [(2, w) for w in TINY_SDXL_WIDTHS]
    batch = trainer.eval_batch
    # The crop diffusers' trainer would record: 88×72 scaled to a 32 px square, centred.
    scale = RESOLUTION / 72
    assert batch.crops[0].tolist() == pytest.approx([72, 88, 0, 8 * scale])
    # The reference: the concept's initial vectors loaded into diffusers once per encoder.
    init = Concept(
        config.token, trainer.vectors.detach(), vectors_2=trainer.vector_sets[1].detach()
    )
    reference = sdxl_reference_pipeline(tiny_sdxl_model_dir, [init])
    texts = [CAPTION.replace("{}", config.token)] * len(batch.timesteps)
    with torch.no_grad():
        hidden, _, pooled, _ = reference.encode_prompt(texts, do_classifier_free_guidance=False)
        noisy = trainer.schedule.scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)

        def loss_with(crop: list[float]) -> float:
            time_ids = torch.tensor([[*crop, RESOLUTION, RESOLUTION]])
            added = {"text_embeds": pooled, "time_ids": time_ids.expand(len(texts), 6)}
            prediction = reference.unet(noisy, batch.timesteps, hidden, added_cond_kwargs=added)
            return F.mse_loss(prediction.sample, batch.noise).item()

        expected = loss_with([72, 88, 0, 8 * scale])
        # The control: the crop's corner alone moves the loss by far more than the tolerance
        # (measured: 7e-5 relative; the tiny UNet's time embedding is a small part of it).
        assert abs(loss_with([72, 88, 0, 0]) - expected) > 1e-5 * expected
    assert trainer.evaluation_loss() == pytest.approx(expected, rel=1e-6)


def test_both_sets_learn_and_nothing_frozen_moves(
    sdxl_model, tiny_sdxl_model_dir, captioned_images, tmp_path
) -> None:
    parts = ("text_encoder", "text_encoder_2", "unet", "vae")
    before = {name: snapshot(getattr(sdxl_model, name)) for name in parts}
    out = tmp_path / "out"
    config = sdxl_config(captioned_images, out, tiny_sdxl_model_dir, steps=3, lr=5e-2)
    trainer = prepare(config, sdxl_model)
    start = [v.detach().clone() for v in trainer.vector_sets]
    concept = trainer.train()
    assert concept.vectors_2 is not None
    for learned, initial in zip((concept.vectors, concept.vectors_2), start, strict=True):
        assert not torch.equal(learned, initial)
    for name, state in before.items():
        after = getattr(sdxl_model, name).state_dict()
        assert all(torch.equal(value, after[key]) for key, value in state.items()), name
    assert all(p.grad is None for part in parts for p in getattr(sdxl_model, part).parameters())
    # The file is SDXL's (clip_l / clip_g), read back with both widths checked.
    width_l, width_g = TINY_SDXL_WIDTHS
    stored = load_concept(
        out / "learned_embeds.safetensors", expected_width=width_l, expected_width_2=width_g
    )
    assert stored.source_format is ConceptFormat.SDXL and stored.token == config.token
    assert stored.vectors_2 is not None and torch.equal(stored.vectors, concept.vectors)
    assert torch.equal(stored.vectors_2, concept.vectors_2)


def test_resume_is_exact_and_validation_renders(
    sdxl_model, tiny_sdxl_model_dir, captioned_images, tmp_path
) -> None:
    common = {"steps": 4, "checkpoint_every": 2, "lr": 5e-2, "embedding_reg_weight": 0.1}
    whole = invert(
        sdxl_config(captioned_images, tmp_path / "a", tiny_sdxl_model_dir, **common),
        model=sdxl_model,
    )
    config = sdxl_config(
        captioned_images,
        tmp_path / "b",
        tiny_sdxl_model_dir,
        **{**common, "steps": 2},
        validate_every=2,
        num_validation_images=2,
        validation_steps=2,
    )
    invert(config, model=sdxl_model)
    resumed = invert(dataclasses.replace(config, steps=4, resume=True), model=sdxl_model)
    assert torch.equal(resumed.vectors, whole.vectors)
    assert resumed.vectors_2 is not None and whole.vectors_2 is not None
    assert torch.equal(resumed.vectors_2, whole.vectors_2)
    from PIL import Image

    grid = Image.open(tmp_path / "b" / "validation" / "step-4.png")
    assert grid.size == (2 * RESOLUTION, RESOLUTION)


def test_textinv_invert_takes_an_sdxl_model(
    tiny_sdxl_model_dir, captioned_images, tmp_path
) -> None:
    from textinv.cli import main

    out = tmp_path / "run"
    argv = ["invert", "--images", str(captioned_images), "--token", "<sdxl-toy>", "--init", "toy"]
    argv += ["--out", str(out), "--model", str(tiny_sdxl_model_dir), "--steps", "1"]
    assert main([*argv, "--resolution", str(RESOLUTION)]) == 0
    stored = load_concept(out / "learned_embeds.safetensors")
    assert stored.source_format is ConceptFormat.SDXL and stored.vectors_2 is not None
