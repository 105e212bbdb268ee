"""Stage 2 of ``textinv toy train``: the UNet and the text encoder, jointly, with an EMA of both.

Noise prediction on the cached latents, with ``caption_dropout`` empty captions (for
classifier-free guidance) and offset noise (so that flat backgrounds can change colour).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from transformers import CLIPTokenizer

from textinv.testing import MAX_LENGTH
from textinv.toy.training.components import SCHEDULE
from textinv.toy.training.config import ToyTrainConfig
from textinv.toy.training.saving import MODEL_DIR, save_checkpoint, save_model
from textinv.toy.training.state import Dataset, RunClock, ToyState, log_loss
from textinv.toy.training.vae_stage import Latents


def run_unet_stage(state: ToyState, data: Dataset, latents: Latents, clock: RunClock) -> None:
    """Train up to ``unet_steps``; each checkpoint also saves the EMA model, to look at."""
    ids = tokenize(state.tokenizer, data.captions)
    empty_ids = tokenize(state.tokenizer, [""])[0]
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    while state.unet_step < state.config.unet_steps:
        loss = unet_step(state, latents, ids, empty_ids, noise_scheduler)
        if state.unet_step % 50 == 0:
            log_loss(state, "unet", loss, clock)
        if clock.checkpoint_due():
            save_checkpoint(state)
            save_model(state, state.config.out / MODEL_DIR)
            clock.saved()


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """[N, 77] ids, padded as the pipeline pads them."""
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    assert isinstance(ids, torch.Tensor)
    return ids


def unet_lr(config: ToyTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return config.unet_lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.unet_steps - config.warmup_steps, 1)
    return config.unet_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def unet_step(
    state: ToyState,
    latents: Latents,
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    noise_scheduler: DDPMScheduler,
) -> float:
    """One noise-prediction step of the UNet and the text encoder, then the EMA update."""
    config, gen = state.config, state.generator
    index = torch.randint(ids.shape[0], (config.unet_batch,), generator=gen)
    mean, std = latents[0][index], latents[1][index]  # [B, 4, 8, 8]
    assert state.scaling_factor is not None
    x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * state.scaling_factor
    batch_ids = ids[index].clone()  # [B, 77]
    dropped = torch.rand(config.unet_batch, generator=gen) < config.caption_dropout
    batch_ids[dropped] = empty_ids
    noise = torch.randn(x0.shape, generator=gen)
    # Offset noise: a per-channel constant, so the model can move a whole background's colour.
    noise = noise + config.offset_noise * torch.randn((x0.shape[0], 4, 1, 1), generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    noisy = noise_scheduler.add_noise(x0, noise, t)
    hidden = state.text_encoder(batch_ids).last_hidden_state  # [B, 77, D]
    prediction = state.unet(noisy, t, encoder_hidden_states=hidden).sample
    loss = F.mse_loss(prediction, noise)
    for group in state.unet_opt.param_groups:
        group["lr"] = unet_lr(config, state.unet_step)
    state.unet_opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [*state.unet.parameters(), *state.text_encoder.parameters()]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    state.unet_opt.step()
    update_ema(state)
    state.unet_step += 1
    return loss.item()


@torch.no_grad()
def update_ema(state: ToyState) -> None:
    """EMA of the UNet and the text encoder, with a decay that warms up over the first steps."""
    decay = min(state.config.ema_decay, (1 + state.unet_step) / (10 + state.unet_step))
    pairs = ((state.ema_unet, state.unet), (state.ema_text_encoder, state.text_encoder))
    for ema, live in pairs:
        for e, p in zip(ema.parameters(), live.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)
