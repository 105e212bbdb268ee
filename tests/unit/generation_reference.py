"""diffusers' own ``StableDiffusionPipeline`` as the reference for generation parity tests."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from textinv.concepts import Concept, save_concept
from textinv_server.pipeline import decode_png
from textinv_server.requests import GenerationRequest, GenerationResult, Scheduler

# Built here from diffusers' classes directly, not through textinv_server.schedulers, so a wrong
# mapping there shows up as a parity failure.
REFERENCE_SCHEDULERS: dict[Scheduler, tuple[Any, dict[str, Any]]] = {
    Scheduler.DDIM: (DDIMScheduler, {}),
    Scheduler.EULER: (EulerDiscreteScheduler, {}),
    Scheduler.EULER_ANCESTRAL: (EulerAncestralDiscreteScheduler, {}),
    Scheduler.DPM_SOLVER_PP_2M: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    Scheduler.PNDM: (PNDMScheduler, {}),
    Scheduler.DPM_SOLVER_PP_2M_SDE: (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
    ),
}


def reference_pipeline(
    model_dir: Path, concepts: Mapping[str, torch.Tensor], folder: Path
) -> StableDiffusionPipeline:
    """diffusers' pipeline with every concept loaded through ``load_textual_inversion``."""
    pipeline = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None)
    pipeline.set_progress_bar_config(disable=True)
    # diffusers' clip_skip reads text_encoder.text_model.final_layer_norm, a module transformers
    # 5 removed (CLIPTextModel is flat now): the alias hands its code the same layer norm.
    encoder = pipeline.text_encoder
    if not hasattr(encoder, "text_model"):
        encoder.text_model = SimpleNamespace(final_layer_norm=encoder.final_layer_norm)
    for i, (token, vectors) in enumerate(concepts.items()):
        path = save_concept(Concept(token, vectors), folder / f"concept{i}.safetensors")
        pipeline.load_textual_inversion(path)
    return pipeline


def reference_images(
    pipeline: StableDiffusionPipeline,
    request: GenerationRequest,
    embed: Callable[[str], torch.Tensor] | None = None,
) -> np.ndarray:
    """``uint8 [n, H, W, 3]`` from diffusers for a resolved request (image i seeded seed + i):
    ``StableDiffusionPipeline`` (or ``StableDiffusionXLPipeline``, whichever ``pipeline`` is),
    or ``StableDiffusionImg2ImgPipeline`` for an init image. An empty negative prompt is
    diffusers' None, the one SDXL's ``force_zeros_for_empty_prompt`` zeroes.

    With ``embed`` (text → ``prompt_embeds [1, T, D]``), diffusers gets the prompt and the
    negative prompt as embeddings built by it, instead of encoding them itself."""
    texts: dict[str, Any] = {
        "prompt": request.prompt,
        # "" with a negative_prompt_2: diffusers zeroes only a None negative prompt.
        "negative_prompt": request.negative_prompt or ("" if request.negative_prompt_2 else None),
        "clip_skip": request.clip_skip or None,
    }
    for name in ("prompt_2", "negative_prompt_2"):  # SDXL's second encoder; "" takes the first's
        if getattr(request, name):
            texts[name] = getattr(request, name)
    if embed is not None:
        texts = {
            "prompt_embeds": embed(request.prompt),
            "negative_prompt_embeds": embed(request.negative_prompt),
        }
    if request.init_image is None:
        run: Any = pipeline
        task: dict[str, Any] = {"width": request.width, "height": request.height}
    else:
        run = StableDiffusionImg2ImgPipeline(**pipeline.components)
        run.set_progress_bar_config(disable=True)
        image = Image.open(io.BytesIO(request.init_image)).convert("RGB")
        task = {"image": image, "strength": request.effective_strength}
    use_scheduler(run, request)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
    output = run(
        **texts,
        **task,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        num_images_per_prompt=request.num_images,
        generator=generators if len(generators) > 1 else generators[0],
        output_type="np",
    )
    return np.asarray((output.images * 255).round().astype(np.uint8))


def use_scheduler(pipeline: Any, request: GenerationRequest) -> None:
    """A fresh scheduler of the request's kind. A scheduler's config remembers every option it
    was built with: the Karras flag is dropped so one request's schedule never leaks into the
    next."""
    scheduler_class, overrides = REFERENCE_SCHEDULERS[request.scheduler]
    config = {k: v for k, v in pipeline.scheduler.config.items() if k != "use_karras_sigmas"}
    if request.karras_sigmas:
        overrides = {**overrides, "use_karras_sigmas": True}
    pipeline.scheduler = scheduler_class.from_config(config, **overrides)


def diffusers_text_states(pipeline: Any, prompt: str) -> Any:
    """diffusers' own encoding of ``prompt`` with its loaded concepts: ``maybe_convert_prompt``,
    its tokenizer, its text encoder (``.last_hidden_state`` and ``.pooler_output``)."""
    converted = pipeline.maybe_convert_prompt(prompt, pipeline.tokenizer)
    ids = pipeline.tokenizer(
        converted, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipeline.text_encoder(ids)


def pixels(result: GenerationResult) -> np.ndarray:
    """The result's PNGs decoded to ``uint8 [n, H, W, 3]``."""
    return np.stack([decode_png(png) for png in result.images])


def max_pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, f"shapes differ: {a.shape} vs {b.shape}"
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
