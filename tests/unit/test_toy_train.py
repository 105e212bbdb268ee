"""``textinv toy train``: seeded steps, a checkpoint, a resume, a loadable diffusers folder."""

from __future__ import annotations

from pathlib import Path

import torch

from textinv.cli import build_parser
from textinv.model import load_base_model
from textinv.toy import world
from textinv.toy.train import CHECKPOINT, ToyTrainConfig, load_checkpoint, new_state, train


def test_a_short_run_resumes_and_saves_an_sd_folder(tmp_path: Path) -> None:
    config = ToyTrainConfig(
        out=tmp_path / "run", dataset_size=12, vae_steps=2, vae_batch=4, unet_steps=2, unet_batch=4
    )
    train(config)
    state = new_state(config)
    load_checkpoint(state)
    assert (state.vae_step, state.unet_step) == (2, 2)
    before = state.unet.conv_in.weight.clone()

    longer = ToyTrainConfig(**{**config.__dict__, "unet_steps": 3})
    folder = train(longer, resume=True)
    load_checkpoint(state)
    assert state.unet_step == 3  # one more step, not three
    assert not torch.equal(before, state.unet.conv_in.weight)

    model = load_base_model(folder)
    assert model.default_resolution == world.RESOLUTION
    assert model.vae_scale_factor == 4
    assert state.scaling_factor is not None
    assert abs(model.latent_scaling - state.scaling_factor) < 1e-6
    # Every word of the world is one token of the model's tokenizer.
    for word in ("star", "striped", "background", "checkered"):
        assert len(model.tokenizer(word, add_special_tokens=False).input_ids) == 1
    assert (config.out / CHECKPOINT).is_file()


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["toy", "train", "--out", "x", "--resume"])
    assert args.resume and args.out == Path("x")
