"""The paper's CLIP and DINO similarities, for real models: local folders only, no processors.

CLIP image similarity compares generated images with the concept's training images, CLIP text
similarity compares them with their prompt without the placeholder (both the mean cosine of
unit embeddings), and DINO image similarity the mean cosine of a ViT's [CLS] features.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class ClipScorer:
    """Image and text embeddings from a local ``CLIPModel`` folder (no processor classes)."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def load(cls, folder: Path) -> ClipScorer:
        from transformers import CLIPModel, CLIPTokenizer

        folder = _model_folder(folder, "CLIP")
        model = CLIPModel.from_pretrained(str(folder)).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        mean, std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)  # OpenAI CLIP's
        preprocessor = folder / "preprocessor_config.json"
        if preprocessor.is_file():
            settings = json.loads(preprocessor.read_text())
            mean = tuple(settings.get("image_mean", mean))  # type: ignore[assignment]
            std = tuple(settings.get("image_std", std))  # type: ignore[assignment]
        return cls(model, tokenizer, int(model.config.vision_config.image_size), mean, std)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, E], unit length."""
        pixels = _pixels(images, self.image_size, self.mean, self.std)
        return _unit(_features(self.model.get_image_features(pixel_values=pixels)))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, E], unit length."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        return _unit(_features(self.model.get_text_features(**tokens)))

    def image_similarity(
        self, images: Sequence[Image.Image], references: Sequence[Image.Image]
    ) -> float:
        """Mean pairwise cosine between generated and reference images."""
        return float((self.embed_images(images) @ self.embed_images(references).T).mean())

    def text_similarity(self, images: Sequence[Image.Image], text: str) -> float:
        return float((self.embed_images(images) @ self.embed_texts([text]).T).mean())


@dataclass(frozen=True)
class DinoScorer:
    """[CLS] features of a local ViT folder (DINO, DINOv2, or any ``AutoModel`` ViT)."""

    model: Any
    image_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet's, as DINO uses
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def load(cls, folder: Path) -> DinoScorer:
        from transformers import AutoModel

        folder = _model_folder(folder, "DINO")
        model = AutoModel.from_pretrained(str(folder)).eval()
        return cls(model, int(getattr(model.config, "image_size", 224)))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D], unit length."""
        pixels = _pixels(images, self.image_size, self.mean, self.std)
        return _unit(self.model(pixel_values=pixels).last_hidden_state[:, 0])

    def image_similarity(
        self, images: Sequence[Image.Image], references: Sequence[Image.Image]
    ) -> float:
        return float((self.embed_images(images) @ self.embed_images(references).T).mean())


def _model_folder(folder: Path, what: str) -> Path:
    """``folder`` as a ``Path``, once it is known to hold a transformers model."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} model folder {str(folder)!r} has no config.json")
    return folder


def _pixels(
    images: Sequence[Image.Image],
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """PIL images → [N, 3, size, size], normalized."""
    arrays = [
        np.asarray(i.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for i in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor, or an output object with ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[no-any-return]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)
