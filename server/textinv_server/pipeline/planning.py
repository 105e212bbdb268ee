"""Request planning: what one request carries into a batch, and which requests may share one.

A request is checked and its prompts embedded when it arrives (``GenerationPipeline.prepare``),
so every error it can cause is raised before any backend work. Requests with equal
``PreparedRequest.batch_key()`` (size, steps, scheduler, whether guidance runs, and the prompts'
77-token chunk count, which sets the UNet's sequence length) then run as one batch; each
``PreparedRequest`` keeps its own progress callback and cancellation, and is the only wrapper of
a request between its arrival and its ``RunningRequest`` (the denoising loop's mutable state).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
    """A checked request with a concrete seed and size, its prompts already embedded, and the
    one home of its progress callback and cancellation.

    ``embeddings`` rows: ``[negative, prompt]`` when guidance runs, else ``[prompt]``. It is
    cancelled once ``cancel()`` was called (the batcher, when its caller goes away) or the
    caller's own ``is_cancelled`` check turns true (the Python API).
    """

    request: GenerationRequest
    embeddings: PromptEmbeddings
    warnings: tuple[str, ...] = ()
    on_step: ProgressCallback | None = None
    is_cancelled: CancelCheck | None = None
    init_image: torch.Tensor | None = field(default=None, repr=False)  # [1, 3, H, W] in [-1, 1]
    # SDXL: the same rows through the second text encoder's tokenizer and table.
    embeddings_2: PromptEmbeddings | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def cancel(self) -> None:
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set() or (self.is_cancelled is not None and self.is_cancelled())

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batch: the request's key and the prompts'
        chunk count (prompts, weights and syntax may differ)."""
        return (*self.request.batch_key(), self.embeddings.chunks)

    def report(self, progress: StepProgress) -> None:
        if self.on_step is not None:
            self.on_step(progress)


def check_batch(batch: Sequence[PreparedRequest], limits: ShapeLimits) -> None:
    """Refuse a batch whose requests cannot share one UNet call per step, or that is too big."""
    if not batch:
        raise InvalidInputError("a batch needs at least one request, got none")
    keys = {prepared.batch_key() for prepared in batch}
    if len(keys) > 1:
        raise InvalidInputError(
            f"requests in one batch must share size, steps, scheduler, whether guidance "
            f"runs and their prompts' chunk count; got {sorted(map(str, keys))}"
        )
    first = batch[0].request
    assert first.width is not None and first.height is not None
    limits.check(first.width, first.height, sum(prepared.request.num_images for prepared in batch))
