"""What a toy training run holds: its modules, optimizers and generator, its data set, its clock."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from textinv.toy import world
from textinv.toy.training.components import (
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
)
from textinv.toy.training.config import ToyTrainConfig

log = logging.getLogger(__name__)

DATASET = "dataset.pt"


@dataclass
class ToyState:
    config: ToyTrainConfig
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    ema_text_encoder: CLIPTextModel
    ema_unet: UNet2DConditionModel
    vae_opt: torch.optim.Optimizer
    unet_opt: torch.optim.Optimizer
    generator: torch.Generator
    vae_step: int = 0
    unet_step: int = 0
    scaling_factor: float | None = None
    history: list[dict[str, float | str]] = dataclasses.field(default_factory=list)


def new_state(config: ToyTrainConfig) -> ToyState:
    """Fresh modules from ``config.seed``; the EMA copies start equal to the live ones."""
    tokenizer = build_tokenizer(config.out / "tokenizer_src")
    torch.manual_seed(config.seed)
    vae = build_vae(config.vae_channels)
    text_encoder = build_text_encoder(tokenizer, config.text_width)
    unet = build_unet(config.text_width, config.unet_channels, config.unet_layers)
    ema_text_encoder = build_text_encoder(tokenizer, config.text_width)
    ema_unet = build_unet(config.text_width, config.unet_channels, config.unet_layers)
    ema_text_encoder.load_state_dict(text_encoder.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    for module in (ema_text_encoder, ema_unet):
        module.requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    return ToyState(
        config=config,
        tokenizer=tokenizer,
        vae=vae,
        text_encoder=text_encoder,
        unet=unet,
        ema_text_encoder=ema_text_encoder,
        ema_unet=ema_unet,
        vae_opt=torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0),
        unet_opt=torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01),
        generator=torch.Generator().manual_seed(config.seed),
    )


@dataclass(frozen=True)
class Dataset:
    pixels: torch.Tensor  # [N, 3, 32, 32] uint8
    captions: list[str]


def load_or_render_dataset(config: ToyTrainConfig) -> Dataset:
    """The run's scenes, rendered once and cached in ``config.out`` (``dataset.pt``)."""
    path = config.out / DATASET
    if path.is_file():
        payload = torch.load(path, weights_only=False)
        if len(payload["captions"]) == config.dataset_size:
            return Dataset(payload["pixels"], payload["captions"])
    scenes = world.sample_scenes(config.seed, config.dataset_size)
    pixels = torch.from_numpy(np.stack([np.asarray(world.render(s)) for s in scenes]))
    dataset = Dataset(pixels.permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes])
    torch.save({"pixels": dataset.pixels, "captions": dataset.captions}, path)
    return dataset


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float [-1, 1], the VAE's input range."""
    return pixels.float() / 127.5 - 1.0


@dataclass
class RunClock:
    """When the run started and when it last wrote a checkpoint (``time.monotonic`` seconds)."""

    checkpoint_every_s: float
    started: float = dataclasses.field(default_factory=time.monotonic)
    last_save: float = dataclasses.field(default_factory=time.monotonic)

    def checkpoint_due(self) -> bool:
        return time.monotonic() - self.last_save > self.checkpoint_every_s

    def saved(self) -> None:
        self.last_save = time.monotonic()


def log_loss(state: ToyState, stage: str, loss: float, clock: RunClock) -> None:
    """Log one step's loss and keep it in the run's history (which the checkpoint records)."""
    step = state.vae_step if stage == "vae" else state.unet_step
    elapsed = time.monotonic() - clock.started
    state.history.append({"stage": stage, "step": step, "loss": loss, "elapsed_s": elapsed})
    log.info("%s step %d loss %.4f (%.0f s)", stage, step, loss, elapsed)
