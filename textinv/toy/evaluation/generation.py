"""Generation for ``textinv toy eval``: diffusers' own pipeline, the reference runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from textinv.concepts import load_concept
from textinv.toy.evaluation.config import EvalConfig


def load_pipeline(model: Path, concept_file: Path, token: str) -> Any:
    """``StableDiffusionPipeline`` at fp32 with the concept loaded by ``load_textual_inversion``."""
    from diffusers import StableDiffusionPipeline

    # fp32 on the CPU: the shipped weights are fp16, which CPUs run slowly or not at all.
    pipeline = StableDiffusionPipeline.from_pretrained(
        str(model), dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    concept = load_concept(concept_file)
    # diffusers names a K-vector concept token, token_1, …; give it plain [K, D] vectors.
    pipeline.load_textual_inversion(
        {concept.token: concept.vectors.float()}, token=token or concept.token
    )
    return pipeline


def generate(pipeline: Any, prompt: str, config: EvalConfig) -> list[Image.Image]:
    """``images_per_prompt`` images of one prompt, seeds ``seed`` … ``seed + n - 1``."""
    generators = [
        torch.Generator().manual_seed(config.seed + i) for i in range(config.images_per_prompt)
    ]
    result = pipeline(
        [prompt] * config.images_per_prompt,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        generator=generators,
    )
    return list(result.images)
