"""The trainer's data: training images, their augmentation pool, and the VAE latent cache.

DESIGN decision 3: work that does not change is done once. Each image is loaded once (EXIF
orientation honoured; grayscale, palette, CMYK and 16-bit images converted; alpha composited on
white, or kept as a loss mask). A fixed pool of augmentation variants (crops × flips) is cut from
it and resized to the training resolution with a Lanczos filter. The VAE encodes each variant once;
the cache keeps the latent *distribution* (mean and log-variance), and every training step samples
from it with the run's generator, so the VAE never runs during training.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from textinv.choices import coerce_choices
from textinv.errors import InvalidInputError, quote
from textinv.templates import TOKEN_PLACEHOLDER
from textinv_client.choices import Choice

MIN_IMAGE_SIDE = 64
DEFAULT_MAX_IMAGES = 64
# Width × height, read from the header before decoding: a 12-megapixel phone photo fits.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# The only decoders an upload reaches (PIL has dozens, each its own attack surface).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
CAPTION_SUFFIX = ".txt"
# CLIP reads 77 tokens; a caption is a short sentence with "{}" in it.
MAX_CAPTION_CHARS = 1000
# Files in an image folder that are not images and are not refused.
_IGNORED_SUFFIXES = (CAPTION_SUFFIX,)


class CropMode(Choice):
    """How the pool's squares are cut: the largest centred one, or ``num_crops`` random ones."""

    __choice_name__ = "crop mode"

    CENTER = "center"
    RANDOM = "random"


@dataclass(frozen=True)
class TrainingImage:
    """One training image as RGB (alpha composited on white), its alpha, and its caption."""

    path: Path
    rgb: Image.Image
    alpha: Image.Image | None  # mode "L", or None when the image has no transparency
    caption: str | None  # a template with "{}" for the token, from NAME.txt


@dataclass(frozen=True)
class AugmentationSpec:
    """How the fixed pool of variants is cut from each image."""

    resolution: int
    crop: CropMode = CropMode.CENTER  # CENTER: the largest centred square; RANDOM: num_crops
    crop_scale: tuple[float, float] = (0.8, 1.0)  # random crop side / shorter image side
    num_crops: int = 4
    flip: bool = True  # add the horizontal mirror of every crop
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self)  # callers may write crop="random"


@dataclass(frozen=True)
class LatentCache:
    """Latent distributions of every (image, variant): ``mean`` and ``logvar`` [N, V, C, h, w].

    ``mask`` [N, V, 1, h, w] holds the alpha mask at latent resolution, or is ``None``;
    ``crops`` [N, V, 4] each variant's ``Variant.crop``.
    """

    mean: torch.Tensor
    logvar: torch.Tensor
    mask: torch.Tensor | None
    crops: torch.Tensor

    @property
    def num_images(self) -> int:
        return int(self.mean.shape[0])

    @property
    def num_variants(self) -> int:
        return int(self.mean.shape[1])

    def sample(
        self,
        images: torch.Tensor,
        variants: torch.Tensor,
        generator: torch.Generator,
        scaling_factor: float,
    ) -> torch.Tensor:
        """Draw latents [B, C, h, w] for the chosen (image, variant) pairs, already scaled."""
        mean = self.mean[images, variants]
        std = torch.exp(0.5 * self.logvar[images, variants])
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        return (mean + std * noise) * scaling_factor

    def masks(self, images: torch.Tensor, variants: torch.Tensor) -> torch.Tensor | None:
        return None if self.mask is None else self.mask[images, variants]


# ---------------------------------------------------------------------------------------------
# Loading


def list_image_files(folder: str | Path, max_images: int = DEFAULT_MAX_IMAGES) -> list[Path]:
    """The candidate image files of ``folder``, sorted; every non-caption file must be an image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidInputError(f"image folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _IGNORED_SUFFIXES
    )
    if not files:
        raise InvalidInputError(f"image folder {str(folder)!r} holds no images")
    if len(files) > max_images:
        raise InvalidInputError(
            f"image folder {str(folder)!r} holds {len(files)} files; the cap is {max_images} "
            "(raise it with --max-images)"
        )
    return files


def load_training_images(
    folder: str | Path,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[TrainingImage]:
    """Load and check every image of ``folder``; raise naming the first bad file."""
    return [
        load_training_image(path, max_pixels=max_pixels)
        for path in list_image_files(folder, max_images)
    ]


def load_training_image(
    path: Path, name: str | None = None, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> TrainingImage:
    """``name`` stands for the file in errors (an upload's name rather than a server path)."""
    rgb, alpha = load_image(path, name, max_pixels=max_pixels)
    return TrainingImage(path, rgb, alpha, read_caption(path, name))


def load_image(
    source: Path | bytes,
    name: str | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    min_side: int = MIN_IMAGE_SIDE,
) -> tuple[Image.Image, Image.Image | None]:
    """``(rgb, alpha)`` of a file or of its bytes: EXIF orientation applied, any mode converted,
    alpha on white.

    Only PNG, JPEG and WebP are opened, and the size in the header is checked against
    ``max_pixels`` and ``min_side`` before a pixel is decoded. Every failure is an
    ``InvalidInputError`` naming ``name`` (or the path). Thread-safe: no global state is changed
    (PIL's own bomb check warns above ``Image.MAX_IMAGE_PIXELS``; the limit here never exceeds it,
    so anything that would warn is refused instead).
    """
    shown = name or str(source if isinstance(source, Path) else "image")
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        with Image.open(_readable(source), formats=IMAGE_FORMATS) as opened:
            _check_size(opened.size, shown, limit, min_side)
            opened.load()
            image = ImageOps.exif_transpose(opened)
    except InvalidInputError:
        raise
    except UnidentifiedImageError as error:  # PIL's message repeats the path; ours names it once
        raise InvalidInputError(
            f"{shown!r}: not a readable image (PNG, JPEG or WebP; or a corrupt file)"
        ) from error
    except Image.DecompressionBombError as error:  # a header over twice PIL's own limit
        raise InvalidInputError(
            f"{shown!r}: image is too large (at most {limit} pixels)"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise InvalidInputError(
            f"{shown!r}: not a readable image ({_first_line(error)})"
        ) from error
    return _to_rgb_and_alpha(image)


def _readable(source: Path | bytes) -> Path | io.BytesIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source


def _check_size(size: tuple[int, int], shown: str, max_pixels: int, min_side: int) -> None:
    """The header's width × height, before decoding: no allocation follows a claim."""
    width, height = size
    if width * height > max_pixels:
        raise InvalidInputError(
            f"{shown!r}: image is {width}×{height} px; the limit is {max_pixels} pixels"
        )
    if min(width, height) < min_side:
        raise InvalidInputError(
            f"{shown!r}: image is {width}×{height} px; each side must be at least {min_side} px"
        )


def _to_rgb_and_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clipping at 255.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.max() <= 1.0 else 1.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8))
    elif mode == "LA" or mode == "PA" or mode == "RGBa" or mode == "La":
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        alpha = image.getchannel("A")
        if alpha.getextrema() == (255, 255):
            return image.convert("RGB"), None
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image).convert("RGB"), alpha
    # L, 1, CMYK, YCbCr, LAB, HSV, RGBX: PIL's own conversions.
    return image.convert("RGB"), None


def read_caption(image_path: Path, name: str | None = None) -> str | None:
    """The caption in ``NAME.txt`` beside ``NAME.png``; it must hold ``{}`` for the token.

    Only ``{}`` means anything in a caption: other braces are text (captions are never format
    strings; see ``textinv.templates.fill_template``).
    """
    caption_path = image_path.with_suffix(CAPTION_SUFFIX)
    shown = f"{name} (caption)" if name else str(caption_path)
    if not caption_path.is_file():
        return None
    try:
        with caption_path.open("rb") as stream:
            # UTF-8 takes at most 4 bytes a character: one more than this is over the limit.
            raw = stream.read(4 * MAX_CAPTION_CHARS + 1)
        text = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(
            f"{shown!r}: cannot read the caption ({type(error).__name__})"
        ) from error
    if len(raw) > 4 * MAX_CAPTION_CHARS or len(text) > MAX_CAPTION_CHARS:
        raise InvalidInputError(
            f"{shown!r}: a caption is at most {MAX_CAPTION_CHARS} characters, got {quote(text)}"
        )
    if TOKEN_PLACEHOLDER not in text:
        raise InvalidInputError(
            f"{shown!r}: a caption must contain '{{}}' where the token goes, "
            f"e.g. 'a photo of {{}} on a table'; got {quote(text)}"
        )
    return text


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------------
# Augmentation pool


def crop_boxes(
    size: tuple[int, int], spec: AugmentationSpec, generator: torch.Generator
) -> list[tuple[int, int, int, int]]:
    """The square crop boxes (left, top, right, bottom) of one image's pool."""
    width, height = size
    short = min(width, height)
    if spec.crop is CropMode.CENTER:
        left, top = (width - short) // 2, (height - short) // 2
        return [(left, top, left + short, top + short)]
    low, high = spec.crop_scale
    boxes = []
    for _ in range(spec.num_crops):
        u = torch.rand((3,), generator=generator, dtype=torch.float64).tolist()
        side = max(1, round(short * (low + (high - low) * u[0])))
        left = math.floor((width - side) * u[1])
        top = math.floor((height - side) * u[2])
        boxes.append((left, top, left + side, top + side))
    return boxes


@dataclass(frozen=True)
class Variant:
    """One entry of an image's pool: the square crop at the training resolution, its alpha, and
    where it came from, as SDXL's micro-conditioning reads it: ``(original height, width, crop
    top, left)``, the corner in the frame of the image scaled so that the crop is the
    resolution (the frame diffusers' and kohya's SDXL trainers resize into before cropping)."""

    rgb: Image.Image
    alpha: Image.Image | None
    crop: tuple[float, float, float, float]


def augmentation_pool(
    image: TrainingImage, spec: AugmentationSpec, generator: torch.Generator
) -> list[Variant]:
    """The variants of one image: every crop resized with Lanczos, then (with ``flip``) mirrored."""
    variants = []
    size = (spec.resolution, spec.resolution)
    width, height = image.rgb.size
    for box in crop_boxes(image.rgb.size, spec, generator):
        rgb = image.rgb.resize(size, Image.Resampling.LANCZOS, box=box)
        alpha = (
            None
            if image.alpha is None
            else image.alpha.resize(size, Image.Resampling.LANCZOS, box=box)
        )
        scale = spec.resolution / (box[2] - box[0])
        top, left = box[1] * scale, box[0] * scale
        variants.append(Variant(rgb, alpha, (height, width, top, left)))
        if spec.flip:  # the mirror's corner, in the mirrored scaled frame
            mirrored_left = width * scale - left - spec.resolution
            variants.append(
                Variant(
                    ImageOps.mirror(rgb),
                    None if alpha is None else ImageOps.mirror(alpha),
                    (height, width, top, mirrored_left),
                )
            )
    return variants


def to_pixel_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image → float32 [3, H, W] in [-1, 1], as the VAE takes it."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_mask_tensor(alpha: Image.Image | None, size: tuple[int, int]) -> torch.Tensor:
    """An alpha channel → float32 [1, H, W] in [0, 1] (ones without alpha)."""
    if alpha is None:
        return torch.ones(1, *size)
    return torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)[None]


# ---------------------------------------------------------------------------------------------
# Latent cache


@torch.no_grad()
def encode_latent_cache(
    images: Sequence[TrainingImage],
    vae: Any,  # diffusers AutoencoderKL
    spec: AugmentationSpec,
    *,
    alpha_mask: bool = False,
    vae_scale_factor: int = 8,
    batch_size: int = 4,
) -> LatentCache:
    """Encode every (image, variant) once; keep each latent distribution's mean and log-variance.

    The crops come from a generator seeded with ``spec.seed`` alone, so a resumed run rebuilds
    exactly the same pool.
    """
    generator = torch.Generator().manual_seed(spec.seed)
    pools = [augmentation_pool(image, spec, generator) for image in images]
    flat = [variant for pool in pools for variant in pool]
    parameter = next(iter(vae.parameters()))
    means, logvars = [], []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start : start + batch_size]
        pixels = torch.stack([to_pixel_tensor(variant.rgb) for variant in chunk])
        posterior = vae.encode(pixels.to(parameter.device, parameter.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        logvars.append(posterior.logvar.float().cpu())
    num_images, num_variants = len(images), len(pools[0])
    mean = torch.cat(means).reshape(num_images, num_variants, *means[0].shape[1:])
    logvar = torch.cat(logvars).reshape(num_images, num_variants, *logvars[0].shape[1:])
    mask = None
    if alpha_mask and any(image.alpha is not None for image in images):
        size = (spec.resolution, spec.resolution)
        full = torch.stack([to_mask_tensor(v.alpha, size) for v in flat])  # [N*V, 1, R, R]
        small = torch.nn.functional.avg_pool2d(full, vae_scale_factor)  # area average
        mask = small.reshape(num_images, num_variants, *small.shape[1:])
    crops = torch.tensor([v.crop for v in flat]).reshape(num_images, num_variants, 4)
    return LatentCache(mean.contiguous(), logvar.contiguous(), mask, crops)
