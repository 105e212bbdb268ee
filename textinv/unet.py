"""The UNet as a positional, tensor-only call: ``forward(*inputs in the export spec's order)``
returns the prediction tensor (no diffusers output class, no ``return_dict``), which is what
``torch.onnx.export`` (``textinv_export.modules``) and the trainer's TorchScript trace
(``textinv.trainer.traced``) both record.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn


def unet_module(unet: UNet2DConditionModel, is_sdxl: bool) -> UNetModule:
    """SDXL's five-input call, or SD 1.x/2.x's three-input one."""
    return SdxlUNetModule(unet) if is_sdxl else UNetModule(unet)


class UNetModule(nn.Module):
    """``(sample [B, 4, h, w], timestep float [B], encoder_hidden_states [B, 77, D])`` →
    ``noise_pred [B, 4, h, w]`` (ε or v, as the model was trained)."""

    def __init__(self, unet: UNet2DConditionModel) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        out = self.unet(sample, timestep, encoder_hidden_states, return_dict=False)
        return out[0]


class SdxlUNetModule(UNetModule):
    """SDXL's: ``(sample, timestep, encoder_hidden_states [B, T, 2048], text_embeds [B, P],
    time_ids [B, 6])`` → ``noise_pred``."""

    def forward(  # type: ignore[override]
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        text_embeds: torch.Tensor,
        time_ids: torch.Tensor,
    ) -> torch.Tensor:
        added = {"text_embeds": text_embeds, "time_ids": time_ids}
        out = self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )
        return out[0]
