"""Validation grids: the validation prompt rendered with the run's current vectors, as one PNG."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textinv.fileio import atomic_write_bytes
from textinv.trainer.run_files import VALIDATION_DIR
from textinv_client.choices import ConceptProperty

if TYPE_CHECKING:
    from textinv.trainer.run import Trainer

GUIDANCE_SCALE = 7.5
_DEFAULT_PROMPTS = {
    ConceptProperty.OBJECT: "a photo of a {}",
    ConceptProperty.STYLE: "a painting in the style of {}",
}


@torch.no_grad()
def write_validation_grid(trainer: Trainer) -> Path:
    """Render the validation prompt with the current vectors; write ``validation/step-N.png``."""
    config = trainer.config
    prompt = config.validation_prompt or _DEFAULT_PROMPTS[config.learnable_property]
    grid = render_grid(
        trainer,
        prompt.replace("{}", config.token),
        num_images=config.num_validation_images,
        steps=config.validation_steps,
        seed=config.seed,
    )
    path = trainer.out / VALIDATION_DIR / f"step-{trainer.state.step}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def render_grid(
    trainer: Trainer, prompt: str, *, num_images: int, steps: int, seed: int
) -> Any:  # -> PIL.Image.Image
    """``num_images`` samples of ``prompt`` (DDIM, guidance 7.5) with the trainer's current
    vectors, through diffusers' pipeline fed our prompt embeddings; one grid image."""
    pipeline = _pipeline(trainer)
    concepts = {trainer.config.token: trainer.vectors.detach()}
    unet_dtype = next(trainer.model.unet.parameters()).dtype
    device = trainer.device

    def encode(texts: list[str]) -> torch.Tensor:
        embeds = trainer.encoder.embed(texts, concepts)
        hidden, _ = trainer.text(embeds.inputs_embeds.to(device), embeds.eos_positions.to(device))
        return hidden.to(unet_dtype)  # [N, 77, D]

    result = pipeline(
        prompt_embeds=encode([prompt] * num_images),
        negative_prompt_embeds=encode([""] * num_images),
        height=trainer.resolution,
        width=trainer.resolution,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE_SCALE,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
    )
    return _tile(result.images, trainer.resolution)


def _pipeline(trainer: Trainer) -> Any:
    """diffusers' pipeline over the trainer's frozen modules, with a DDIM scheduler."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    model = trainer.model
    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=DDIMScheduler.from_config(
            model.scheduler_config, clip_sample=False, set_alpha_to_one=False
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _tile(images: list[Any], side: int) -> Any:
    """The images in a near-square grid, row by row, on white."""
    from PIL import Image

    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * side, rows * side), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * side, (index // columns) * side))
    return grid
