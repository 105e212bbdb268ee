"""VAE decoding and images: finished latents → one VAE call → ``uint8`` pixels → each request's
format (PNG, JPEG or WebP)."""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from textinv_client.choices import ImageFormat
from textinv_server.backends import Backend
from textinv_server.pipeline.latents import RunningRequest


def decode(
    backend: Backend, latent_scaling: float, finished: list[RunningRequest]
) -> tuple[list[tuple[bytes, ...]], float]:
    """One VAE call for every finished image; encoded images per request and the milliseconds."""
    if not finished:
        return [], 0.0
    start = time.perf_counter()
    latents = torch.cat([s.latents for s in finished]) / latent_scaling
    images = backend.decode(latents)  # [n, 3, H, W] in about [-1, 1]
    backend.synchronize()
    vae_ms = (time.perf_counter() - start) * 1000
    pixels = to_uint8(images)
    per_request: list[tuple[bytes, ...]] = []
    for state in finished:
        request, count = state.request, state.request.num_images
        per_request.append(
            tuple(
                encode_image(image, request.output_format, request.effective_quality)
                for image in pixels[:count]
            )
        )
        pixels = pixels[count:]
    return per_request, vae_ms


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[n, 3, H, W]`` in [-1, 1] → ``uint8 [n, H, W, 3]``, rounded as diffusers rounds."""
    pixels = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
    return np.asarray((pixels * 255).round().astype(np.uint8))


def to_png(pixels: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` → PNG bytes (fast compression: lossless either way)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def encode_image(pixels: np.ndarray, image_format: ImageFormat, quality: int) -> bytes:
    """``uint8 [H, W, 3]`` → PNG (lossless, ``quality`` unused), JPEG or WebP bytes."""
    if image_format is ImageFormat.PNG:
        return to_png(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format.name, quality=quality)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG (or JPEG, WebP) bytes → ``uint8 [H, W, 3]`` (for callers and tests that want pixels
    back)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
