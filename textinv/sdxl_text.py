"""SDXL's text conditioning from embeddings (DESIGN decision 1, for two text encoders).

SDXL conditions its UNet on both text encoders: the penultimate layer's hidden states of each,
taken before any final layer norm and concatenated along the width (768 + 1280 = 2048 at full
size), and the ``text_embeds`` that the second encoder's projection makes of its final,
normalized state at the end-of-text position. An SDXL concept is one token with two sets of
vectors, ``[K, D1]`` for the first encoder's table and ``[K, D2]`` for the second's (the
``clip_l`` / ``clip_g`` of kohya's and Automatic1111's files); each set is spliced into its own
encoder's input on the host, as for SD 1.x. An empty negative prompt is all zeros where the
model's ``force_zeros_for_empty_prompt`` says so, as in diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase

from textinv.prompts import PromptEmbeddings, PromptEncoder
from textinv.text_encoder import EmbeddingsTextEncoder, skipped_layers


class SdxlFirstEncoder(nn.Module):
    """``(inputs_embeds [B, T, D1], clip_skip [B])`` → ``hidden [B, T, D1]``: the layer
    ``clip_skip`` before the penultimate one, before the final layer norm."""

    def __init__(self, text_encoder: CLIPTextModel) -> None:
        super().__init__()
        self.encoder = EmbeddingsTextEncoder(text_encoder)

    def forward(self, inputs_embeds: torch.Tensor, clip_skip: torch.Tensor) -> torch.Tensor:
        return skipped_layers(self.encoder.layer_outputs(inputs_embeds)[:-1], clip_skip)


class SdxlSecondEncoder(nn.Module):
    """``(inputs_embeds [B, T, D2], eos_positions [B], clip_skip [B])`` →
    ``(hidden [B, T, D2], text_embeds [B, P])``: the hidden states as the first encoder's, and
    the projection of the final, normalized state at the end-of-text position."""

    def __init__(self, text_encoder_2: CLIPTextModelWithProjection) -> None:
        super().__init__()
        # transformers 5 flattened CLIPTextModel; the projection model still wraps text_model.
        self.encoder = EmbeddingsTextEncoder(text_encoder_2.text_model)
        self.projection = text_encoder_2.text_projection

    def forward(
        self, inputs_embeds: torch.Tensor, eos_positions: torch.Tensor, clip_skip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.encoder.layer_outputs(inputs_embeds)
        last = self.encoder.clip.final_layer_norm(outputs[-1])
        rows = torch.arange(last.shape[0], device=last.device)
        pooled = last[rows, eos_positions.to(torch.long)]  # [B, D2]
        return skipped_layers(outputs[:-1], clip_skip), self.projection(pooled)


class SdxlTextEncoders(nn.Module):
    """``(inputs_embeds [B, T, D1], inputs_embeds_2 [B, T, D2], eos_positions [B], clip_skip
    [B] or None)`` → ``(prompt_embeds [B, T, D1 + D2], text_embeds [B, P])``.

    ``clip_skip`` k takes the layer k before the penultimate one, as diffusers' SDXL does. The
    export stage compiles the two halves as two graphs (``text_encoder``, ``text_encoder_2``)."""

    def __init__(
        self, text_encoder: CLIPTextModel, text_encoder_2: CLIPTextModelWithProjection
    ) -> None:
        super().__init__()
        self.first = SdxlFirstEncoder(text_encoder)
        self.second = SdxlSecondEncoder(text_encoder_2)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        inputs_embeds_2: torch.Tensor,
        eos_positions: torch.Tensor,
        clip_skip: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if clip_skip is None:
            clip_skip = torch.zeros(len(eos_positions), dtype=torch.long)
        first = self.first(inputs_embeds, clip_skip)
        second, pooled = self.second(inputs_embeds_2, eos_positions, clip_skip)
        return torch.cat([first, second], -1), pooled


@dataclass(frozen=True)
class SdxlConcepts:
    """Registered SDXL concepts: per token, the first encoder's and the second's vectors."""

    first: Mapping[str, torch.Tensor]  # {token: [K, D1]}
    second: Mapping[str, torch.Tensor]  # {token: [K, D2]}, the same tokens and K


class SdxlPromptEncoder:
    """Both tokenizers and token tables: texts → each encoder's ``PromptEmbeddings``."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        table: torch.Tensor,
        tokenizer_2: PreTrainedTokenizerBase,
        table_2: torch.Tensor,
    ) -> None:
        self.first = PromptEncoder(tokenizer, table)
        self.second = PromptEncoder(tokenizer_2, table_2)

    def embed(
        self, texts: Sequence[str], concepts: SdxlConcepts
    ) -> tuple[PromptEmbeddings, PromptEmbeddings]:
        return self.first.embed(texts, concepts.first), self.second.embed(texts, concepts.second)


def encode_sdxl_prompts(
    encoders: SdxlTextEncoders,
    prompts: SdxlPromptEncoder,
    texts: Sequence[str],
    concepts: SdxlConcepts,
    zero_empty: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds [B, 77, D1 + D2], text_embeds [B, P])`` of ``texts``; with
    ``zero_empty`` (the model's ``force_zeros_for_empty_prompt``) an empty text's rows are 0."""
    first, second = prompts.embed(texts, concepts)
    hidden, pooled = encoders(first.inputs_embeds, second.inputs_embeds, second.eos_positions)
    if zero_empty:
        empty = torch.tensor([not text for text in texts])
        hidden = hidden.masked_fill(empty[:, None, None], 0.0)
        pooled = pooled.masked_fill(empty[:, None], 0.0)
    return hidden, pooled


def sdxl_time_ids(crops: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning ``[B, 6]``: each row's original (height, width) and crop
    (top, left), ``crops [B, 4]``, then the target (height, width), as SDXL was trained on."""
    size = crops.new_tensor(target).expand(crops.shape[0], 2)
    return torch.cat([crops, size], dim=1)
