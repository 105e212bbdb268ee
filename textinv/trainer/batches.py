"""The batches a run draws: random training batches and the one fixed evaluation batch.

Every draw comes from the run's CPU ``torch.Generator``, in a fixed order, so a resumed run (whose
checkpoint restores the generator) draws the same batches as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textinv.data import LatentCache
from textinv.prompts import TokenizedPrompt

# One prompt, tokenized once per text encoder (SDXL has two tokenizers).
EncoderPrompts = tuple[TokenizedPrompt, ...]

# The evaluation batch's generator is seeded apart from the training one, so evaluating never
# changes what training draws.
EVAL_SEED_OFFSET = 7919


@dataclass(frozen=True)
class Batch:
    """Clean latents, the noise added to them, their timesteps, prompts and loss masks."""

    latents: torch.Tensor  # scaled clean latents [B, C, h, w]
    noise: torch.Tensor  # [B, C, h, w]
    timesteps: torch.Tensor  # [B], long
    prompts: tuple[EncoderPrompts, ...]  # per sample
    masks: torch.Tensor | None  # [B, 1, h, w], or None without alpha masks
    crops: torch.Tensor  # [B, 4]: each latent's crop (``textinv.data.Variant.crop``)


@dataclass(frozen=True)
class TrainingData:
    """What the training images became once: per-image prompts and the latent cache."""

    prompts: list[list[EncoderPrompts]]  # per image: its caption, or every template
    cache: LatentCache
    latent_scaling: float  # the VAE's scaling factor
    num_train_timesteps: int

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A random batch: images, augmentation variants, prompts, latents, noise, timesteps."""
        b, g, cache = batch_size, generator, self.cache
        images = torch.randint(0, cache.num_images, (b,), generator=g)
        variants = torch.randint(0, cache.num_variants, (b,), generator=g)
        choices = torch.randint(0, 1 << 30, (b,), generator=g).tolist()
        prompts = tuple(
            self.prompts[int(i)][c % len(self.prompts[int(i)])]
            for i, c in zip(images.tolist(), choices, strict=True)
        )
        latents = cache.sample(images, variants, g, self.latent_scaling)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=g)
        masks, crops = cache.masks(images, variants), cache.crops[images, variants]
        return Batch(latents, noise, timesteps, prompts, masks, crops)

    def eval_batch(self, size: int, seed: int) -> Batch:
        """The fixed evaluation batch: distribution means, seeded noise, spread timesteps."""
        generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
        cache = self.cache
        images = torch.arange(size) % cache.num_images
        variants = torch.zeros(size, dtype=torch.long)
        latents = cache.mean[images, variants] * self.latent_scaling
        noise = torch.randn(latents.shape, generator=generator)
        # Timesteps at the centres of `size` equal bins: the whole noise range, fixed.
        timesteps = ((torch.arange(size) + 0.5) * self.num_train_timesteps / size).long()
        prompts = tuple(
            self.prompts[int(i)][k % len(self.prompts[int(i)])] for k, i in enumerate(images)
        )
        masks, crops = cache.masks(images, variants), cache.crops[images, variants]
        return Batch(latents, noise, timesteps, prompts, masks, crops)
