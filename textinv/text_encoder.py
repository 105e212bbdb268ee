"""The CLIP text transformer driven by embeddings instead of token ids (DESIGN decision 1).

``CLIPTextModel.forward`` needs ``input_ids``; only its embeddings module takes
``inputs_embeds``. This wrapper runs embeddings (adding positions) → the encoder's layers with a
causal mask → final layer norm, which reproduces ``last_hidden_state`` exactly, and returns the
pooled output at the end-of-text position the host computed. It is what the trainer backprops
through and what the export stage compiles.

Clip skip (``clip_skip [B]``, one per row): row b's hidden states are those of the layer
``clip_skip[b]`` before the last, through the final layer norm, as diffusers' ``clip_skip``
computes them (1 is the penultimate layer, Automatic1111's "Clip skip 2"). A per-row choice
keeps requests that differ in it in one batch; the pooled output always comes from the last
layer, as in diffusers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextModel


class EmbeddingsTextEncoder(nn.Module):
    """``(inputs_embeds [B, T, D], eos_positions [B], clip_skip [B] or None)`` →
    ``(last_hidden_state [B, T, D], pooled [B, D])``."""

    def __init__(self, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.clip = text_encoder

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.layer_outputs(inputs_embeds)
        last = self.clip.final_layer_norm(outputs[-1])
        batch = torch.arange(last.shape[0], device=last.device)
        pooled = last[batch, eos_positions.to(torch.long)]  # [B, D]
        if clip_skip is None:
            return last, pooled
        return self.clip.final_layer_norm(skipped_layers(outputs, clip_skip)), pooled

    def layer_outputs(self, inputs_embeds: torch.Tensor) -> list[torch.Tensor]:
        """Each transformer layer's output ``[B, T, D]``, before any final layer norm."""
        hidden = self.clip.embeddings(inputs_embeds=inputs_embeds)  # [B, T, D], positions added
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)  # [1, 1, T, T]
        outputs = []
        for layer in self.clip.encoder.layers:
            hidden = layer(hidden, mask)
            outputs.append(hidden)
        return outputs


def skipped_layers(outputs: list[torch.Tensor], clip_skip: torch.Tensor) -> torch.Tensor:
    """Row b of ``outputs[-1 - clip_skip[b]]`` ``[B, T, D]``: a chain of selects (one per layer,
    elementwise and cheap next to a layer), which ONNX and TensorRT take as they are."""
    skip = clip_skip.to(torch.long)[:, None, None]  # [B, 1, 1]
    selected = outputs[-1]
    for skipped in range(1, len(outputs)):
        selected = torch.where(skip == skipped, outputs[-1 - skipped], selected)
    return selected


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [1, 1, T, T]: position i attends to positions ≤ i."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]
