"""Put a trained shapes-world model into the package: fp16 weights, bundled images, a sample grid.

``python -m textinv.toy.ship --from out/toy/model`` writes ``textinv/toy/model`` (the diffusers
layout at fp16, a few MB), each held-out concept's 4 training images under
``textinv/toy/assets/<name>/``, and a grid of samples for the README.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from textinv.toy import ASSETS_DIR, DEFAULT_GUIDANCE, MODEL_DIR, world

SAMPLE_PROMPTS: tuple[str, ...] = (
    "a red star on a blue background",
    "a yellow circle on a black background",
    "a white heart on a green background",
    "a large blue square on a orange background",
    "a green triangle on a pink checkered background",
    "a purple cross on a yellow background",
    "a orange arrow on a gray dotted background",
    "a small black star in the top left corner on a white background",
    "a blue and orange striped circle on a white background",
    "a small pink heart in the bottom right corner on a purple background",
)
MAX_SHIPPED_BYTES = 25 * 1024 * 1024


def ship_model(source: Path, target: Path = MODEL_DIR) -> Path:
    """Copy a saved model to ``target`` at fp16, through diffusers' own loader and writer."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(source), dtype=torch.float16)
    if target.exists():
        shutil.rmtree(target)
    pipeline.save_pretrained(str(target))
    _drop_source_paths(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    if size > MAX_SHIPPED_BYTES:
        raise ValueError(f"the shipped model is {size / 2**20:.1f} MiB, over the 25 MiB limit")
    return target


def _drop_source_paths(folder: Path) -> None:
    """diffusers records where it loaded from (``_name_or_path``); a shipped model names no path."""
    for path in folder.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_concept_images(folder: Path = ASSETS_DIR, count: int = 4) -> list[Path]:
    """Each held-out concept's training images, ``<folder>/<name>/<i>.png``."""
    paths = []
    for concept in world.HELD_OUT.values():
        (folder / concept.name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(world.concept_images(concept, count)):
            path = folder / concept.name / f"{i}.png"
            image.save(path)
            paths.append(path)
    return paths


def sample_grid(
    model: Path,
    prompts: Sequence[str] = SAMPLE_PROMPTS,
    per_prompt: int = 6,
    steps: int = 25,
    guidance: float = DEFAULT_GUIDANCE,
    scale: int = 3,
) -> Image.Image:
    """One row per prompt: the prompt, then ``per_prompt`` seeded samples."""
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(model), dtype=torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    side, text_width = world.RESOLUTION * scale, 420
    grid = Image.new("RGB", (text_width + per_prompt * side, len(prompts) * side), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(prompts):
        generators = [torch.Generator().manual_seed(i) for i in range(per_prompt)]
        images = pipeline(
            [prompt] * per_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
        ).images
        draw.text((6, row * side + side // 2 - 6), prompt, fill="black")
        for col, image in enumerate(images):
            big = image.resize((side, side), Image.Resampling.NEAREST)
            grid.paste(big, (text_width + col * side, row * side))
    return grid


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m textinv.toy.ship")
    parser.add_argument("--from", dest="source", type=Path, required=True, help="a saved model")
    parser.add_argument("--grid", type=Path, default=Path("docs/toy_samples.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = ship_model(args.source)
    print(f"shipped {target}")
    for path in write_concept_images():
        print(f"wrote {path}")
    args.grid.parent.mkdir(parents=True, exist_ok=True)
    sample_grid(target).save(args.grid)
    print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
