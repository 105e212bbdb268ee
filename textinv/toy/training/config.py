"""The settings of one ``textinv toy train`` run: torch-free, for the command line to read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textinv_client.flags import flag


@dataclass(frozen=True)
class ToyTrainConfig:
    """Every stage's settings; the defaults are the shipped model's first run (seed 0), which was
    then resumed to 16,000 UNet steps (see ``textinv.toy.train``)."""

    out: Path = field(default=Path("out/toy"), metadata=flag("where checkpoints go"))
    seed: int = field(default=0, metadata=flag("seed of the data set, the weights and each draw"))
    dataset_size: int = field(default=40_000, metadata=flag("captioned scenes to train on"))
    vae_steps: int = field(default=2_500, metadata=flag("VAE training steps"))
    vae_batch: int = 16
    vae_lr: float = 1e-3
    unet_steps: int = field(default=8_000, metadata=flag("UNet + text encoder training steps"))
    unet_batch: int = field(default=32, metadata=flag("UNet + text encoder batch size"))
    unet_lr: float = 6e-4
    warmup_steps: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # the share of empty captions, for classifier-free guidance
    offset_noise: float = 0.05
    checkpoint_every_s: float = 300.0
    text_width: int = 64
    unet_channels: tuple[int, ...] = (64, 96, 128)
    unet_layers: int = 1
    vae_channels: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        for name in ("dataset_size", "vae_batch", "unet_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vae_steps", "unet_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")

    def to_json(self) -> dict[str, Any]:
        """The settings as ``config.json`` records them beside the run's checkpoint."""
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        return values
