"""The generation pipeline, written once over the ``Backend`` interface (DESIGN decision 4).

prompt → ``PromptEncoder`` (host-side lookup, concept rows spliced in) → backend text encoder →
denoising loop with classifier-free guidance (uncond and cond halves in one UNet call) → backend
VAE decode → PNG bytes. Its modules, in the order a batch meets them:

- ``planning``: what a prepared request carries, and which requests may share a batch;
- ``text_encoding``: prompts → embeddings (at arrival) → hidden states (one call per batch);
- ``latents``: each request's scheduler, per-image generators and initial noise (seeds);
- ``denoising``: the loop, one UNet call per step, and its step clock;
- ``decoding``: one VAE call, then PNG bytes;
- ``generation``: ``GenerationPipeline``, whose ``run_batch`` calls the above as numbered steps.

Concepts are passed per call as ``{token: vectors [K, D]}`` (the server passes its registry's
snapshot). The pipeline keeps no concept state, so registering or deleting a concept changes
nothing here: the next call simply sees it, with no re-export and no reload.
"""

from textinv_server.pipeline.decoding import decode_png, to_png, to_uint8
from textinv_server.pipeline.denoising import StepClock
from textinv_server.pipeline.generation import GenerationPipeline, load_generation_pipeline
from textinv_server.pipeline.planning import (
    NO_CONCEPTS,
    CancelCheck,
    Concepts,
    Outcome,
    PreparedRequest,
    ProgressCallback,
)

__all__ = [
    "NO_CONCEPTS",
    "CancelCheck",
    "Concepts",
    "GenerationPipeline",
    "Outcome",
    "PreparedRequest",
    "ProgressCallback",
    "StepClock",
    "decode_png",
    "load_generation_pipeline",
    "to_png",
    "to_uint8",
]
