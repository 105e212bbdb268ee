"""Saving a toy run: its resumable checkpoint, and its EMA model in the diffusers layout."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from textinv.toy.training.components import (
    build_text_encoder,
    build_unet,
    build_vae,
    inference_scheduler,
)
from textinv.toy.training.state import ToyState

CHECKPOINT = "checkpoint.pt"
MODEL_DIR = "model"  # the EMA model, beside the checkpoint
# The state's parts that have a state_dict; the checkpoint stores each under its name.
_MODULES = ("vae", "text_encoder", "unet", "ema_text_encoder", "ema_unet", "vae_opt", "unet_opt")


def save_checkpoint(state: ToyState) -> Path:
    """Every stage's state, the optimizers and the generator; written atomically."""
    payload = {name: getattr(state, name).state_dict() for name in _MODULES}
    payload |= {
        "generator": state.generator.get_state(),
        "vae_step": state.vae_step,
        "unet_step": state.unet_step,
        "scaling_factor": state.scaling_factor,
        "history": state.history,
    }
    path = state.config.out / CHECKPOINT
    torch.save(payload, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return path


def load_checkpoint(state: ToyState) -> None:
    payload = torch.load(state.config.out / CHECKPOINT, weights_only=False)
    for name in _MODULES:
        getattr(state, name).load_state_dict(payload[name])
    state.generator.set_state(payload["generator"])
    state.vae_step = int(payload["vae_step"])
    state.unet_step = int(payload["unet_step"])
    state.scaling_factor = payload["scaling_factor"]
    state.history = list(payload["history"])


def save_model(state: ToyState, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The EMA text encoder and UNet with the VAE, as a ``StableDiffusionPipeline`` folder."""
    # The pipeline class pulls in image processors; import it only when a folder is written.
    from diffusers import StableDiffusionPipeline

    assert state.scaling_factor is not None
    config = state.config
    state.vae.register_to_config(scaling_factor=state.scaling_factor)
    # Fresh modules, so that casting to ``dtype`` leaves the training state as it is.
    text_encoder = build_text_encoder(state.tokenizer, config.text_width)
    text_encoder.load_state_dict(state.ema_text_encoder.state_dict())
    unet = build_unet(config.text_width, config.unet_channels, config.unet_layers)
    unet.load_state_dict(state.ema_unet.state_dict())
    vae = build_vae(config.vae_channels)
    vae.load_state_dict(state.vae.state_dict())
    vae.register_to_config(scaling_factor=state.scaling_factor)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=state.tokenizer,
        unet=unet,
        scheduler=inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(dtype)
    pipeline.save_pretrained(folder)
    return folder
