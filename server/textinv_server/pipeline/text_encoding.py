"""Prompt encoding: a request's prompts → token embeddings (at arrival, on the host) → the
backend text encoder's hidden states (once per batch).

The host-side lookup splices each concept's rows in (DESIGN decision 1), so the text encoder
only ever sees embeddings. One text-encoder call covers every request of a batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from textinv.prompts import PromptEmbeddings, PromptEncoder
from textinv_server.backends import Backend
from textinv_server.pipeline.planning import Concepts, PreparedRequest
from textinv_server.requests import GenerationRequest


def embed_prompts(
    prompts: PromptEncoder, request: GenerationRequest, concepts: Concepts
) -> PromptEmbeddings:
    """``inputs_embeds [B, T, D]``: rows ``[negative, prompt]`` with guidance, else ``[prompt]``."""
    texts = [request.prompt]
    if request.uses_guidance:
        texts.insert(0, request.negative_prompt)
    return prompts.embed(texts, concepts)


@dataclass(frozen=True)
class EncodedPrompts:
    """Per request, its hidden states ``[T, D]``; ``uncond`` is empty without guidance."""

    uncond: list[torch.Tensor]
    cond: list[torch.Tensor]
    milliseconds: float


def encode_prompts(backend: Backend, batch: Sequence[PreparedRequest]) -> EncodedPrompts:
    """One text-encoder call over every request's rows."""
    start = time.perf_counter()
    inputs_embeds = torch.cat([prepared.embeddings.inputs_embeds for prepared in batch])
    eos_positions = torch.cat([prepared.embeddings.eos_positions for prepared in batch])
    hidden = backend.encode_text(inputs_embeds, eos_positions)  # [rows, T, D]
    backend.synchronize()
    per_request = hidden.split([len(prepared.embeddings.eos_positions) for prepared in batch])
    guided = batch[0].request.uses_guidance
    uncond = [rows[0] for rows in per_request] if guided else []
    cond = [rows[-1] for rows in per_request]
    return EncodedPrompts(uncond, cond, (time.perf_counter() - start) * 1000)
