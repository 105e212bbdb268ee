"""Fidelity read through the service's own runtime: the torch backend's ``GenerationPipeline``.

For one row (what stands in the prompts for the concept: the learned token, the init word, or the
best caption) it generates ``RECONSTRUCTION_PROMPT`` images and each edit's images from fixed
seeds, and the shipped classifier reads them (``textinv.toy.evaluation``): the shares of
reconstruction, edit applied and edit + kept, each with its binomial standard error. With the
defaults (128 reconstruction images, 3 edits × 48) no standard error exceeds 0.045.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from textinv.toy import DEFAULT_GUIDANCE, world
from textinv.toy.classifier import ShapesClassifier, read
from textinv.toy.evaluation.edits import RECONSTRUCTION_PROMPT, edits_for
from textinv.toy.evaluation.time_to_concept import Fidelity, Share

# Images per request (the server's own limit) and requests per backend batch.
_REQUEST_IMAGES = 8
_BATCH_REQUESTS = 4
# The edits' seeds start apart from the reconstruction's, so no image repeats between them.
EDIT_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class FidelitySettings:
    reconstruction_images: int = 128
    edit_images: int = 48  # per edit, three edits
    steps: int = 25
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0


class FidelityReader:
    """Generates a row's fixed image set on the torch backend and reads it."""

    def __init__(self, model: Any, classifier: ShapesClassifier, settings: FidelitySettings):
        from textinv_server.backends.torch_backend import TorchBackend
        from textinv_server.host_model import HostModel
        from textinv_server.pipeline import GenerationPipeline

        self.pipeline = GenerationPipeline(HostModel.of(model), TorchBackend(model))
        self.classifier = classifier
        self.settings = settings

    def read(
        self,
        words: str,
        target: world.HeldOutConcept,
        concepts: Mapping[str, torch.Tensor] | None = None,
    ) -> Fidelity:
        """``words``'s fidelity to ``target``; ``concepts`` ({token: [K, D]}) for a learned
        token in ``words``."""
        settings, thing = self.settings, target.thing
        recon = self.images(
            RECONSTRUCTION_PROMPT.format(words),
            settings.reconstruction_images,
            settings.seed,
            concepts,
        )
        shows = [r.shows(thing) for r in read(self.classifier, recon)]
        applied: list[bool] = []
        kept: list[bool] = []
        for index, edit in enumerate(edits_for(thing)):
            seed = settings.seed + EDIT_SEED_OFFSET * (index + 1)
            batch = self.images(edit.template.format(words), settings.edit_images, seed, concepts)
            for reading in read(self.classifier, batch):
                applied.append(edit.applied(reading))
                kept.append(edit.applied(reading) and reading.shows(thing))
        return Fidelity(Share.of(shows), Share.of(applied), Share.of(kept))

    def images(
        self,
        prompt: str,
        count: int,
        seed: int,
        concepts: Mapping[str, torch.Tensor] | None,
    ) -> list[Image.Image]:
        """``count`` images of ``prompt`` from seeds ``seed`` … ``seed + count - 1``, in batches of
        up to ``_BATCH_REQUESTS`` requests of ``_REQUEST_IMAGES``."""
        from textinv_server.requests import GenerationRequest

        settings = self.settings
        requests = [
            GenerationRequest(
                prompt,
                steps=settings.steps,
                guidance_scale=settings.guidance,
                seed=start,
                num_images=min(_REQUEST_IMAGES, seed + count - start),
            )
            for start in range(seed, seed + count, _REQUEST_IMAGES)
        ]
        images: list[Image.Image] = []
        for first in range(0, len(requests), _BATCH_REQUESTS):
            prepared = [
                self.pipeline.prepare(r, dict(concepts or {}))
                for r in requests[first : first + _BATCH_REQUESTS]
            ]
            for outcome in self.pipeline.run_batch(prepared):
                if isinstance(outcome, BaseException):
                    raise outcome
                images += [Image.open(io.BytesIO(png)).convert("RGB") for png in outcome.images]
        return images
