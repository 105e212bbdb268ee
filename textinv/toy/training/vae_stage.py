"""Stage 1 of ``textinv toy train``: the VAE, then every image's latent distribution, once."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from textinv.toy.training.saving import save_checkpoint
from textinv.toy.training.state import Dataset, RunClock, ToyState, log_loss, to_unit_range

log = logging.getLogger(__name__)

Latents = tuple[torch.Tensor, torch.Tensor]  # every image's posterior mean and std, [N, 4, 8, 8]
_ENCODE_CHUNK = 500  # images per VAE forward when encoding the whole data set


def run_vae_stage(state: ToyState, data: Dataset, clock: RunClock) -> None:
    """Train the VAE up to ``vae_steps`` (resuming from ``state.vae_step``)."""
    while state.vae_step < state.config.vae_steps:
        loss = vae_step(state, data)
        if state.vae_step % 50 == 0:
            log_loss(state, "vae", loss, clock)
        if clock.checkpoint_due():
            save_checkpoint(state)
            clock.saved()


def vae_step(state: ToyState, data: Dataset) -> float:
    """One step of reconstruction (MSE + ½ L1) and a tiny KL term, on a cosine schedule."""
    config = state.config
    index = torch.randint(len(data.captions), (config.vae_batch,), generator=state.generator)
    images = to_unit_range(data.pixels[index])  # [B, 3, 32, 32]
    posterior = state.vae.encode(images).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(
        posterior.mean.shape, generator=state.generator
    )
    recon = state.vae.decode(latents).sample
    loss = F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images)
    loss = loss + 1e-6 * posterior.kl().mean()
    lr = config.vae_lr * 0.5 * (1 + math.cos(math.pi * state.vae_step / max(config.vae_steps, 1)))
    for group in state.vae_opt.param_groups:
        group["lr"] = lr
    state.vae_opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.vae.parameters(), 1.0)
    state.vae_opt.step()
    state.vae_step += 1
    return loss.item()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, data: Dataset) -> Latents:
    """Every image's posterior mean and std, [N, 4, 8, 8] each."""
    means, stds = [], []
    vae.eval()
    for start in range(0, len(data.captions), _ENCODE_CHUNK):
        chunk = data.pixels[start : start + _ENCODE_CHUNK]
        posterior = vae.encode(to_unit_range(chunk)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    vae.train()
    return torch.cat(means), torch.cat(stds)


def fix_scaling_factor(state: ToyState, latents: Latents) -> None:
    """Once, after the VAE: the factor that gives the latents unit std, as SD's 0.18215 does."""
    if state.scaling_factor is None:
        state.scaling_factor = float(1.0 / latents[0].std())
        log.info("latent scaling factor %.4f", state.scaling_factor)
        save_checkpoint(state)
