"""The CLIP text transformer driven by embeddings instead of token ids (DESIGN decision 1).

``CLIPTextModel.forward`` needs ``input_ids``; only its embeddings module takes
``inputs_embeds``. This wrapper runs embeddings (adding positions) → encoder with a causal mask →
final layer norm, which reproduces ``last_hidden_state`` exactly, and returns the pooled output
at the end-of-text position the host computed. It is what the trainer backprops through and what
the export stage compiles.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextModel


class EmbeddingsTextEncoder(nn.Module):
    """``(inputs_embeds [B, T, D], eos_positions [B])`` → ``(last_hidden_state [B, T, D],
    pooled [B, D])``."""

    def __init__(self, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.clip = text_encoder

    def forward(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.clip.embeddings(inputs_embeds=inputs_embeds)  # [B, T, D], positions added
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)  # [1, 1, T, T]
        hidden = self.clip.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        hidden = self.clip.final_layer_norm(hidden)
        batch = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[batch, eos_positions.to(torch.long)]  # [B, D]
        return hidden, pooled


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask [1, 1, T, T]: position i attends to positions ≤ i."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]
