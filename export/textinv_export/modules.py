"""Thin ``nn.Module`` wrappers whose ``forward`` matches a spec: positional inputs in spec order,
plain tensors out (no diffusers output classes, no ``return_dict``), so ``torch.onnx.export``
traces exactly the contract in ``textinv_export.specs``. ``export_module`` picks a component's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL
from torch import nn

from textinv.model import BaseModel
from textinv.sdxl_text import SdxlFirstEncoder, SdxlSecondEncoder
from textinv.text_encoder import EmbeddingsTextEncoder
from textinv.unet import unet_module
from textinv_export.choices import Component


def export_module(component: Component, model: BaseModel) -> nn.Module:
    """The ``nn.Module`` whose ``forward(*inputs in spec order)`` returns the spec's outputs."""
    builders: dict[Component, Callable[[BaseModel], nn.Module]] = {
        Component.TEXT_ENCODER: text_encoder_module,
        Component.TEXT_ENCODER_2: text_encoder_2_module,
        Component.UNET: lambda m: unet_module(m.unet, m.is_sdxl),
        Component.VAE_DECODER: lambda m: VaeDecoderModule(m.vae),
        Component.VAE_ENCODER: lambda m: VaeEncoderModule(m.vae),
    }
    return builders[Component.parse(component)](model).eval()


def text_encoder_module(model: BaseModel) -> nn.Module:
    """``(inputs_embeds [B, 77, D], eos_positions [B], clip_skip [B])`` →
    ``(last_hidden_state, pooled_output)``; SDXL's first: ``(inputs_embeds, clip_skip)`` →
    ``hidden_states``."""
    if model.is_sdxl:
        return SdxlFirstEncoder(model.text_encoder)
    return EmbeddingsTextEncoder(model.text_encoder)


def text_encoder_2_module(model: BaseModel) -> nn.Module:
    """SDXL's second: ``(inputs_embeds [B, 77, D2], eos_positions [B], clip_skip [B])`` →
    ``(hidden_states, text_embeds)``."""
    assert model.text_encoder_2 is not None, "component_specs gives SDXL models only this one"
    return SdxlSecondEncoder(model.text_encoder_2)


class VaeDecoderModule(nn.Module):
    """``latents [B, 4, h, w]`` (already divided by the scaling factor) → ``image [B, 3, 8h, 8w]``
    in about ``[-1, 1]``."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


class VaeEncoderModule(nn.Module):
    """``image [B, 3, H, W]`` in ``[-1, 1]`` → ``latent_parameters [B, 8, H/8, W/8]``: the mean
    and log-variance of the latent distribution, concatenated on channels (unscaled)."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.parameters
