"""VAE decoding and images: finished latents → one VAE call → ``uint8`` pixels → PNG bytes."""

from __future__ import annotations

import io
import time

import numpy as np
import torch
from PIL import Image

from textinv_server.backends import Backend
from textinv_server.pipeline.latents import RunningRequest


def decode(
    backend: Backend, latent_scaling: float, finished: list[RunningRequest]
) -> tuple[list[tuple[bytes, ...]], float]:
    """One VAE call for every finished image; PNG bytes per request and the milliseconds."""
    if not finished:
        return [], 0.0
    start = time.perf_counter()
    latents = torch.cat([s.latents for s in finished]) / latent_scaling
    images = backend.decode(latents)  # [n, 3, H, W] in about [-1, 1]
    backend.synchronize()
    vae_ms = (time.perf_counter() - start) * 1000
    pngs = [to_png(pixels) for pixels in to_uint8(images)]
    per_request: list[tuple[bytes, ...]] = []
    for state in finished:
        count = state.request.num_images
        per_request.append(tuple(pngs[:count]))
        pngs = pngs[count:]
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


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes → ``uint8 [H, W, 3]`` (for callers and tests that want pixels back)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
