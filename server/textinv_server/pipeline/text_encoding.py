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
from dataclasses import dataclass

import torch

from textinv.prompts import PromptEmbeddings, PromptEncoder, apply_emphasis
from textinv_server.backends import Backend
from textinv_server.pipeline.planning import Concepts, PreparedRequest
from textinv_server.requests import GenerationRequest


def embed_prompts(
    prompts: PromptEncoder, request: GenerationRequest, concepts: Concepts, max_chunks: int
) -> PromptEmbeddings:
    """``inputs_embeds [B, 77·C, D]``: rows ``[negative, prompt]`` with guidance, else
    ``[prompt]``, both with the same chunk count C (1 in the plain syntax)."""
    texts = [request.prompt]
    if request.uses_guidance:
        texts.insert(0, request.negative_prompt)
    return prompts.embed(texts, concepts, request.prompt_syntax, max_chunks)


@dataclass(frozen=True)
class EncodedPrompts:
    """Per request, its hidden states ``[77·C, D]``; ``uncond`` is empty without guidance."""

    uncond: list[torch.Tensor]
    cond: list[torch.Tensor]
    milliseconds: float


def encode_prompts(backend: Backend, batch: Sequence[PreparedRequest]) -> EncodedPrompts:
    """One text-encoder call over every request's rows."""
    start = time.perf_counter()
    inputs_embeds = torch.cat([prepared.embeddings.encoder_rows() for prepared in batch])
    eos_positions = torch.cat([prepared.embeddings.eos_positions for prepared in batch])
    clip_skip = torch.cat([clip_skip_rows(prepared) for prepared in batch])
    hidden = backend.encode_text(inputs_embeds, eos_positions, clip_skip)  # [chunk rows, 77, D]
    backend.synchronize()
    chunk_rows = hidden.split([len(prepared.embeddings.eos_positions) for prepared in batch])
    per_request = [
        joined_chunks(rows, prepared.embeddings)
        for rows, prepared in zip(chunk_rows, batch, strict=True)
    ]
    guided = batch[0].request.uses_guidance
    uncond = [rows[0] for rows in per_request] if guided else []
    cond = [rows[-1] for rows in per_request]
    return EncodedPrompts(uncond, cond, (time.perf_counter() - start) * 1000)


def clip_skip_rows(prepared: PreparedRequest) -> torch.Tensor:
    """``int64 [chunk rows]``: the request's clip skip for each of its text-encoder rows."""
    rows = len(prepared.embeddings.eos_positions)
    return torch.full((rows,), prepared.request.clip_skip, dtype=torch.int64)


def joined_chunks(hidden: torch.Tensor, embeddings: PromptEmbeddings) -> torch.Tensor:
    """One request's encoder output ``[B·C, 77, D]`` → ``[B, 77·C, D]``, emphasis applied."""
    rows = len(embeddings.inputs_embeds)
    return apply_emphasis(hidden.reshape(rows, -1, hidden.shape[-1]), embeddings.weights)
