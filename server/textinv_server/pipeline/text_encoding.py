"""Prompt encoding: a request's prompts → token embeddings (at arrival, on the host) → the
backend text encoder's hidden states (once per batch).

The host-side lookup splices each concept's rows in (DESIGN decision 1), so the text encoder
only ever sees embeddings. One text-encoder call covers every request of a batch: each 77-token
chunk of a long prompt is one row of it, and a request's chunks are concatenated again after it,
where Automatic1111's emphasis weights are applied (``textinv.prompts.apply_emphasis``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import torch

from textinv.prompts import PromptEmbeddings, PromptEncoder, apply_emphasis
from textinv_server.backends import Backend, SdxlTextBackend
from textinv_server.pipeline.planning import Concepts, PreparedRequest
from textinv_server.requests import GenerationRequest


def embed_prompts(
    prompts: PromptEncoder,
    request: GenerationRequest,
    concepts: Concepts,
    max_chunks: int,
    second: bool = False,
) -> PromptEmbeddings:
    """``inputs_embeds [B, 77·C, D]``: rows ``[negative, prompt]`` with guidance, else
    ``[prompt]``, both with the same chunk count C (1 in the plain syntax). For SDXL, call it
    once per text encoder, with that encoder's tokenizer, table and vectors (``second``: its
    ``prompt_2`` texts)."""
    prompt, negative = request.encoder_texts(second)
    texts = [negative, prompt] if request.uses_guidance else [prompt]
    return prompts.embed(texts, concepts, request.prompt_syntax, max_chunks)


@dataclass(frozen=True)
class EncodedPrompts:
    """Per request, its hidden states ``[77·C, D]``; ``uncond`` is empty without guidance."""

    uncond: list[torch.Tensor]
    cond: list[torch.Tensor]
    milliseconds: float
    # SDXL: per request, the pooled text_embeds [P] of each half (empty for SD 1.x/2.x).
    uncond_pooled: list[torch.Tensor] = field(default_factory=list)
    cond_pooled: list[torch.Tensor] = field(default_factory=list)


def encode_prompts(
    backend: Backend, batch: Sequence[PreparedRequest], zero_empty: bool = False
) -> EncodedPrompts:
    """One text-encoder call over every request's rows. ``zero_empty`` (an SDXL model's
    ``force_zeros_for_empty_prompt``): an empty negative prompt's states are zeros."""
    start = time.perf_counter()
    inputs_embeds = torch.cat([prepared.embeddings.encoder_rows() for prepared in batch])
    eos_positions = torch.cat([prepared.embeddings.eos_positions for prepared in batch])
    clip_skip = torch.cat([clip_skip_rows(prepared) for prepared in batch])
    pooled = None
    if batch[0].embeddings_2 is None:
        hidden = backend.encode_text(inputs_embeds, eos_positions, clip_skip)  # [rows, 77, D]
    else:  # SDXL: both encoders, and the second's pooled projection [rows, P]
        seconds = [p.embeddings_2 for p in batch if p.embeddings_2 is not None]
        second = torch.cat([embeddings.encoder_rows() for embeddings in seconds])
        eos_2 = torch.cat([embeddings.eos_positions for embeddings in seconds])  # pooled's
        sdxl = cast(SdxlTextBackend, backend)
        hidden, pooled = sdxl.encode_text_sdxl(inputs_embeds, second, eos_2, clip_skip)
    backend.synchronize()
    sizes = [len(prepared.embeddings.eos_positions) for prepared in batch]
    per_request = [
        joined_chunks(rows, prepared.embeddings)
        for rows, prepared in zip(hidden.split(sizes), batch, strict=True)
    ]
    guided = batch[0].request.uses_guidance
    zeroed = [zero_empty and guided and p.request.empty_negative for p in batch]
    uncond = [zeros_if(rows[0], z) for rows, z in zip(per_request, zeroed, strict=True)]
    encoded = EncodedPrompts(
        uncond if guided else [],
        [rows[-1] for rows in per_request],
        (time.perf_counter() - start) * 1000,
    )
    if pooled is None:
        return encoded
    # Each prompt's pooled embedding is its first chunk's, as Automatic1111 takes it.
    firsts = [
        rows.reshape(len(p.embeddings.inputs_embeds), -1, rows.shape[-1])[:, 0]
        for rows, p in zip(pooled.split(sizes), batch, strict=True)
    ]
    return replace(
        encoded,
        uncond_pooled=[zeros_if(f[0], z) for f, z in zip(firsts, zeroed, strict=True)]
        if guided
        else [],
        cond_pooled=[f[-1] for f in firsts],
    )


def zeros_if(tensor: torch.Tensor, zero: bool) -> torch.Tensor:
    return torch.zeros_like(tensor) if zero else tensor


def clip_skip_rows(prepared: PreparedRequest) -> torch.Tensor:
    """``int64 [chunk rows]``: the request's clip skip for each of its text-encoder rows."""
    rows = len(prepared.embeddings.eos_positions)
    return torch.full((rows,), prepared.request.clip_skip, dtype=torch.int64)


def joined_chunks(hidden: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
    """One request's encoder output ``[B·C, 77, D]`` → ``[B, 77·C, D]``, emphasis applied."""
    rows = len(embeddings.inputs_embeds)
    return apply_emphasis(hidden.reshape(rows, -1, hidden.shape[-1]), embeddings.weights)
