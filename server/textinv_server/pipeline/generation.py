"""``GenerationPipeline``: prompt in, encoded images out, as numbered steps over any backend."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from textinv.errors import CancelledError, InvalidInputError
from textinv.model import BaseModel
from textinv.prompts import PromptEmbeddings, PromptEncoder
from textinv.sdxl_text import SdxlConcepts
from textinv_server.backends import Backend, BackendName, BackendOptions, ShapeLimits
from textinv_server.backends.factory import load_backend
from textinv_server.config import Limits
from textinv_server.host_model import HostModel
from textinv_server.pipeline.decoding import decode
from textinv_server.pipeline.denoising import Outcomes, denoise
from textinv_server.pipeline.init_images import encode_init_images, read_init_image
from textinv_server.pipeline.latents import RunningRequest, start_request
from textinv_server.pipeline.planning import (
    NO_CONCEPTS,
    CancelCheck,
    Concepts,
    Outcome,
    PreparedRequest,
    ProgressCallback,
    check_batch,
)
from textinv_server.pipeline.text_encoding import EncodedPrompts, embed_prompts, encode_prompts
from textinv_server.requests import GenerationRequest, GenerationResult, StageTimings

# The limits of a direct call (``textinv generate``, benchmarks): the server's defaults.
DEFAULT_LIMITS = Limits()


class GenerationPipeline:
    """Prompt in, PNG, JPEG or WebP images out, over any backend. Thread-compatible: one call
    at a time."""

    def __init__(self, host: HostModel, backend: Backend) -> None:
        if backend.model_hash != host.model_hash:
            raise InvalidInputError(
                f"backend was loaded for model {backend.model_hash[:12]}, not for "
                f"{host.model_hash[:12]} ({host.path})"
            )
        if host.is_sdxl and not hasattr(backend, "encode_text_sdxl"):
            raise InvalidInputError(
                f"{host.path.name} is an SDXL model, which the {backend.name.value} backend does "
                f"not run yet; use the torch backend"
            )
        self.host = host
        self.backend = backend
        self.prompts = PromptEncoder(host.tokenizer, host.token_embedding)
        self.prompts_2 = (
            None
            if host.tokenizer_2 is None or host.token_embedding_2 is None
            else PromptEncoder(host.tokenizer_2, host.token_embedding_2)
        )

    def prepare(
        self,
        request: GenerationRequest,
        concepts: Concepts | SdxlConcepts = NO_CONCEPTS,
        *,
        on_step: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> PreparedRequest:
        """Resolve a checked request (``GenerationRequest.check``) and embed its prompts: every
        error that needs the backend or the concepts, before any backend work (the server calls
        this when a request arrives, before it queues, with its ``limits``)."""
        shapes = self.backend.limits
        init_image = None
        if request.init_image is not None:  # the output takes its size unless one is set
            if not shapes.takes_init_image:
                raise InvalidInputError(
                    "init_image: this export has no vae_encoder; export it (`textinv export "
                    "--components vae_encoder`, or all components) to use img2img"
                )
            init_image = read_init_image(request, limits, self.host.vae_scale_factor)
            request = replace(request, width=init_image.shape[-1], height=init_image.shape[-2])
        request = request.resolved(self.host.default_resolution)
        assert request.width is not None and request.height is not None
        shapes.check(request.width, request.height, request.num_images)
        # SDXL starts from the penultimate layer: one fewer to skip.
        layers = self.host.text_encoder_layers - int(self.host.is_sdxl)
        check_clip_skip(request.clip_skip, layers, shapes)
        max_chunks = min(limits.max_prompt_chunks, shapes.max_prompt_chunks or sys.maxsize)
        first, second = concepts_per_encoder(concepts, self.prompts_2 is not None)
        embeddings = embed_prompts(self.prompts, request, first, max_chunks)
        embeddings_2 = self._second_embeddings(request, second, max_chunks, embeddings)
        warnings = embeddings.warnings + (embeddings_2.warnings if embeddings_2 else ())
        return PreparedRequest(
            request,
            embeddings,
            tuple(dict.fromkeys(warnings)),  # the same truncation, once
            on_step,
            is_cancelled,
            init_image=init_image,
            embeddings_2=embeddings_2,
        )

    def _second_embeddings(
        self,
        request: GenerationRequest,
        concepts: Concepts,
        max_chunks: int,
        first: PromptEmbeddings,
    ) -> PromptEmbeddings | None:
        """SDXL's second encoder's rows, laid out as the first's; ``None`` for SD 1.x/2.x,
        which refuses ``prompt_2``."""
        if self.prompts_2 is None:
            for name in ("prompt_2", "negative_prompt_2"):
                if getattr(request, name):
                    raise InvalidInputError(
                        f"{name} is for SDXL's second text encoder; this model has one"
                    )
            return None
        second = embed_prompts(self.prompts_2, request, concepts, max_chunks, second=True)
        if second.chunks != first.chunks:  # both encoders' states are joined token by token
            raise InvalidInputError(
                f"prompt_2 and negative_prompt_2 take {second.chunks} chunks of 75 tokens, "
                f"prompt and negative_prompt {first.chunks}: under a1111 syntax they must match"
            )
        return second

    def __call__(
        self,
        request: GenerationRequest,
        concepts: Concepts | SdxlConcepts = NO_CONCEPTS,
        *,
        on_step: ProgressCallback | None = None,
        is_cancelled: CancelCheck | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> GenerationResult:
        """Check and generate one request; raises ``CancelledError`` if ``is_cancelled`` turns
        true. ``limits`` are the server's defaults unless given."""
        request.check(limits, self.host.default_resolution)
        prepared = self.prepare(
            request, concepts, on_step=on_step, is_cancelled=is_cancelled, limits=limits
        )
        (outcome,) = self.run_batch([prepared])
        if isinstance(outcome, CancelledError):
            raise outcome
        return outcome

    def run_batch(self, batch: Sequence[PreparedRequest], /) -> list[Outcome]:
        """Run prepared requests with one ``batch_key()`` as one batch; one outcome each."""
        start = time.perf_counter()
        # 1. Check that the requests can share a batch.
        check_batch(batch, self.backend.limits)
        # 2. Encode all prompts in one text-encoder call.
        encoded = encode_prompts(self.backend, batch, self.host.force_zeros_for_empty_prompt)
        # 3. Encode the img2img requests' init images in one VAE-encoder call; draw each
        # request's initial latents from its own seeds; give it its own scheduler.
        running = self._start(batch, encoded, encode_init_images(self.backend, batch))
        # 4. Denoising loop with classifier-free guidance; drops requests cancelled on the way.
        outcomes: Outcomes = {}
        step_ms = denoise(self.backend, running, outcomes)
        # 5. Decode what finished and encode each request's images in its format.
        finished = [state for state in running if id(state.prepared) not in outcomes]
        images, vae_ms = decode(self.backend, self.host.latent_scaling, finished)
        # 6. Package each request's images with the batch's stage timings.
        timings = StageTimings(
            text_encoder_ms=encoded.milliseconds,
            unet_total_ms=sum(step_ms),
            unet_step_ms=tuple(step_ms),
            vae_decode_ms=vae_ms,
            total_ms=(time.perf_counter() - start) * 1000,
            batch_size=len(batch),
        )
        for state, encoded_images in zip(finished, images, strict=True):
            prepared = state.prepared
            outcomes[id(prepared)] = GenerationResult(
                encoded_images, prepared.request.seeds, prepared.request, timings, prepared.warnings
            )
        return [outcomes[id(prepared)] for prepared in batch]

    def _start(
        self,
        batch: Sequence[PreparedRequest],
        encoded: EncodedPrompts,
        init_parameters: list[torch.Tensor | None],
    ) -> list[RunningRequest]:
        uncond: list[torch.Tensor | None] = [*encoded.uncond] or [None] * len(batch)
        device = self.backend.device
        return [
            start_request(
                prepared, self.host, device, uncond[i], encoded.cond[i], init, pooled_of(encoded, i)
            )
            for i, (prepared, init) in enumerate(zip(batch, init_parameters, strict=True))
        ]


def pooled_of(
    encoded: EncodedPrompts, index: int
) -> tuple[torch.Tensor | None, torch.Tensor] | None:
    """Request ``index``'s SDXL pooled embeddings ``(uncond or None, cond)``; None for SD 1.x."""
    if not encoded.cond_pooled:
        return None
    uncond = encoded.uncond_pooled[index] if encoded.uncond_pooled else None
    return uncond, encoded.cond_pooled[index]


def concepts_per_encoder(
    concepts: Concepts | SdxlConcepts, sdxl: bool
) -> tuple[Concepts, Concepts]:
    """The vectors for the first text encoder and for SDXL's second one."""
    if isinstance(concepts, SdxlConcepts):
        if not sdxl:
            raise InvalidInputError("SDXL concepts (clip_l and clip_g) need an SDXL model")
        return concepts.first, concepts.second
    if sdxl and concepts:
        raise InvalidInputError(
            "an SDXL model needs each concept's vectors for both text encoders (clip_l and "
            "clip_g), as SDXL concept files hold them"
        )
    return concepts, NO_CONCEPTS


def check_clip_skip(clip_skip: int, layers: int, shapes: ShapeLimits) -> None:
    """A clip skip leaves at least one of the model's ``layers``, and needs a text encoder that
    takes it (an export made before clip skip does not)."""
    if clip_skip >= layers:
        raise InvalidInputError(
            f"clip_skip {clip_skip} would skip every layer: this model's text encoder has "
            f"{layers}, so clip_skip must be in 0..{layers - 1}"
        )
    if clip_skip and not shapes.takes_clip_skip:
        raise InvalidInputError(
            "clip_skip: this export's text encoder takes no clip_skip (it was exported before "
            "clip skip); re-export the model with `textinv export` to use it"
        )


def load_generation_pipeline(
    model: str | Path | BaseModel | None,
    backend: BackendName = BackendName.TORCH,
    options: BackendOptions | None = None,
) -> GenerationPipeline:
    """The pipeline over ``backend`` for ``model`` (a diffusers folder, or a loaded model); see
    ``textinv_server.backends.factory`` for what each backend loads."""
    return GenerationPipeline(*load_backend(model, backend, options or BackendOptions()))
