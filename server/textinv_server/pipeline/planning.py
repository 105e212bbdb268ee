"""Request planning: what one request carries into a batch, and which requests may share one.

A request is checked and its prompts embedded when it arrives (``GenerationPipeline.prepare``),
so every error it can cause is raised before any backend work. Requests with equal
``batch_key()`` (size, steps, scheduler, whether guidance runs) then run as one batch; each keeps
its own progress callback and cancellation check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch

from textinv.errors import CancelledError, InvalidInputError
from textinv.prompts import PromptEmbeddings
from textinv_server.backends import ShapeLimits
from textinv_server.requests import GenerationRequest, GenerationResult, StepProgress

Concepts = Mapping[str, torch.Tensor]  # {token: vectors [K, D]}
NO_CONCEPTS: Concepts = MappingProxyType({})
ProgressCallback = Callable[[StepProgress], None]
CancelCheck = Callable[[], bool]
Outcome = GenerationResult | CancelledError


@dataclass(frozen=True)
class PreparedRequest:
    """A checked request with a concrete seed and size, its prompts already embedded.

    ``embeddings`` rows: ``[negative, prompt]`` when guidance runs, else ``[prompt]``.
    """

    request: GenerationRequest
    embeddings: PromptEmbeddings
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationJob:
    """One request of a batch, with its own progress callback and cancellation check."""

    prepared: PreparedRequest
    on_step: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.prepared.request


def check_batch(jobs: Sequence[GenerationJob], limits: ShapeLimits) -> None:
    """Refuse a batch whose requests cannot share one UNet call per step, or that is too big."""
    if not jobs:
        raise InvalidInputError("a batch needs at least one request, got none")
    keys = {job.request.batch_key() for job in jobs}
    if len(keys) > 1:
        raise InvalidInputError(
            f"requests in one batch must share size, steps, scheduler and whether guidance "
            f"runs; got {sorted(map(str, keys))}"
        )
    first = jobs[0].request
    assert first.width is not None and first.height is not None
    limits.check(first.width, first.height, sum(job.request.num_images for job in jobs))
