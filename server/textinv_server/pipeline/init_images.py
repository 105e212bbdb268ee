"""img2img's start, as diffusers' ``StableDiffusionImg2ImgPipeline`` makes it.

- At arrival (``read_init_image``): the init image is read and checked as a job's images are
  (format, header size against ``max_init_image_pixels``, before a pixel is decoded), then
  resized and scaled to ``[1, 3, H, W]`` in ``[-1, 1]`` by diffusers' own ``VaeImageProcessor``.
- Once per batch (``encode_init_images``): one VAE-encoder call over every img2img request's
  image gives each the posterior's parameters (mean and log-variance).
- Per request (``noised_init_latents``): image i draws from its own generator, in diffusers'
  order, a posterior sample and then the noise that ``scheduler.add_noise`` adds at the
  request's first timestep. A request with strength s runs the last ``int(steps × s)`` of the
  shared schedule: it joins the batch's denoising loop at that step (``start_index``), so
  requests that differ in strength, and text-to-image ones, share a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from textinv.data import load_image
from textinv.errors import InvalidInputError
from textinv_server.backends import Backend
from textinv_server.config import Limits
from textinv_server.pipeline.planning import PreparedRequest
from textinv_server.requests import SIZE_MULTIPLE, GenerationRequest


def read_init_image(
    request: GenerationRequest, limits: Limits, vae_scale_factor: int
) -> torch.Tensor:
    """``[1, 3, H, W]`` float32 in ``[-1, 1]``: at the request's width × height when set, else at
    the image's own size rounded down to multiples of 8."""
    assert request.init_image is not None
    rgb, _ = load_image(
        request.init_image,
        "init_image",
        max_pixels=limits.max_init_image_pixels,
        min_side=SIZE_MULTIPLE,
    )
    width = request.width or rgb.width // SIZE_MULTIPLE * SIZE_MULTIPLE
    height = request.height or rgb.height // SIZE_MULTIPLE * SIZE_MULTIPLE
    if width * height > limits.max_image_pixels:
        raise InvalidInputError(
            f"init_image is {rgb.width}×{rgb.height} px, and the output takes its size: "
            f"{width * height} pixels is over the limit of {limits.max_image_pixels}; set a "
            f"smaller width and height"
        )
    processor = VaeImageProcessor(vae_scale_factor=vae_scale_factor)
    return processor.preprocess(rgb, height=height, width=width).float()


def encode_init_images(
    backend: Backend, batch: Sequence[PreparedRequest]
) -> list[torch.Tensor | None]:
    """Per request, the posterior's parameters ``[1, 2C, h, w]`` of its init image (None for
    text-to-image), from one VAE-encoder call."""
    images = [p.init_image for p in batch if p.init_image is not None]
    if not images:
        return [None] * len(batch)
    parameters = iter(backend.encode_image(torch.cat(images)).split(1))
    return [None if p.init_image is None else next(parameters) for p in batch]


def noised_init_latents(
    request: GenerationRequest, scheduler: Any, init: torch.Tensor, noise: torch.Tensor
) -> tuple[int, torch.Tensor]:
    """``(start_index, latents [n, C, h, w])``: the step at which the request joins the shared
    schedule, and its scaled init latents ``init`` noised with ``noise`` to that step."""
    start = (request.steps - request.denoising_steps) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    timestep = scheduler.timesteps[start : start + 1].repeat(len(init))
    # Scheduler tables stay on the CPU (latents.start_request says why): noised there, once.
    noised = scheduler.add_noise(init.cpu(), noise.cpu(), timestep)
    return start, noised.to(noise.device)


def posterior_samples(parameters: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """``[n, C, h, w]``: one draw per image from the VAE's posterior ``parameters [1, 2C, h, w]``,
    image i from generator i (before its noise, as diffusers draws them)."""
    posterior = DiagonalGaussianDistribution(parameters)
    return torch.cat([posterior.sample(generator) for generator in generators])
