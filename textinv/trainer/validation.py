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
    sets = tuple(v.detach() for v in trainer.vector_sets)
    unet_dtype = next(trainer.model.unet.parameters()).dtype

    def encode(texts: list[str], kind: str) -> dict[str, torch.Tensor]:
        """``{kind}prompt_embeds [N, 77, D]`` (SDXL: also its pooled ``text_embeds``)."""
        text = trainer.text.condition_texts(texts, trainer.config.token, sets, trainer.device)
        embeds = {f"{kind}prompt_embeds": text.hidden.to(unet_dtype)}
        if text.pooled is not None:
            embeds[f"{kind}pooled_prompt_embeds"] = text.pooled.to(unet_dtype)
        return embeds

    result = pipeline(
        **encode([prompt] * num_images, ""),
        **encode([""] * num_images, "negative_"),
        height=trainer.resolution,
        width=trainer.resolution,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE_SCALE,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
    )
    return _tile(result.images, trainer.resolution)


def _pipeline(trainer: Trainer) -> Any:
    """diffusers' pipeline (SD or SDXL) over the trainer's frozen modules, with DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    model = trainer.model
    scheduler = DDIMScheduler.from_config(
        model.scheduler_config, clip_sample=False, set_alpha_to_one=False
    )
    parts = {
        "vae": model.vae,
        "text_encoder": model.text_encoder,
        "tokenizer": model.tokenizer,
        "unet": model.unet,
        "scheduler": scheduler,
    }
    pipeline: Any
    if model.is_sdxl:
        pipeline = StableDiffusionXLPipeline(
            **parts, text_encoder_2=model.text_encoder_2, tokenizer_2=model.tokenizer_2
        )
    else:
        pipeline = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
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
