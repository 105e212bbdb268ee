"""The denoising objective: the noise schedule's target, masked errors and min-SNR-γ weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler

from textinv.errors import InvalidInputError

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    """The model's training noise schedule, as the loss uses it."""

    scheduler: DDPMScheduler
    num_train_timesteps: int
    prediction_type: str  # "epsilon" or "v_prediction"
    snr: torch.Tensor  # [T] fp32: ᾱ_t / (1 - ᾱ_t)

    def target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the UNet should predict for ``latents`` noised with ``noise`` [B, C, h, w]."""
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)  # type: ignore[no-any-return]

    def min_snr_weights(self, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
        """Min-SNR-γ weights [B] (Hang et al. 2023), per prediction type."""
        snr = self.snr[timesteps]
        clipped = snr.clamp(max=gamma)
        return clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr


def noise_schedule(scheduler_config: Any) -> NoiseSchedule:
    """The DDPM schedule of a model's scheduler config; refuse prediction types we cannot train."""
    scheduler = DDPMScheduler.from_config(scheduler_config)
    prediction_type = str(scheduler.config.prediction_type)
    if prediction_type not in PREDICTION_TYPES:
        raise InvalidInputError(
            f"the model's scheduler predicts {prediction_type!r}; the trainer supports "
            "epsilon and v_prediction"
        )
    alphas = scheduler.alphas_cumprod.to(torch.float64)
    return NoiseSchedule(
        scheduler=scheduler,
        num_train_timesteps=int(scheduler.config.num_train_timesteps),
        prediction_type=prediction_type,
        snr=(alphas / (1 - alphas)).float(),
    )


def per_sample_error(
    prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error per sample [B], over the masked latent pixels when there are masks."""
    error = (prediction.float() - target.float()) ** 2  # [B, C, h, w]
    if masks is None:
        return error.mean(dim=(1, 2, 3))
    # masks [B, 1, h, w] broadcast over the C channels
    return (error * masks).sum(dim=(1, 2, 3)) / (
        masks.sum(dim=(1, 2, 3)) * error.shape[1]
    ).clamp_min(1e-6)
