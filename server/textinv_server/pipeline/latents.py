"""Latents and noise preparation: each request's scheduler, generators and initial noise.

Seeds (DESIGN decision 5): image i of a request is drawn from its own CPU generator seeded with
``(seed + i) mod 2^64``, both for the initial noise (``randn_tensor`` exactly as diffusers'
``prepare_latents``) and for the noise ancestral schedulers draw in ``step``. So a request's
images match ``StableDiffusionPipeline`` given ``generator=[Generator().manual_seed(seed + i)]``,
and batching never changes an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from textinv_server.host_model import HostModel
from textinv_server.pipeline.planning import PreparedRequest
from textinv_server.requests import GenerationRequest
from textinv_server.schedulers import make_scheduler, step_kwargs


@dataclass
class RunningRequest:
    """The mutable state of one request inside the denoising loop."""

    prepared: PreparedRequest
    scheduler: Any
    generators: list[torch.Generator]
    latents: torch.Tensor  # [n, C, h, w] on the backend's device
    uncond: torch.Tensor | None  # [n, T, D], None without guidance
    cond: torch.Tensor  # [n, T, D]
    step_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def request(self) -> GenerationRequest:
        return self.prepared.request


def start_request(
    prepared: PreparedRequest,
    host: HostModel,
    device: torch.device,
    uncond: torch.Tensor | None,
    cond: torch.Tensor,
) -> RunningRequest:
    """Per-image generators, a fresh scheduler, and the initial noise as diffusers draws it.

    ``uncond`` and ``cond`` are the request's hidden states ``[T, D]``, shared by its images.
    """
    request = prepared.request
    # The scheduler's timesteps and tables stay on the CPU: its scalars reach the device
    # kernels as arguments, so stepping never waits for the GPU (an index with a CUDA
    # timestep would be a host sync every step). The UNet gets device timesteps (denoising).
    scheduler = make_scheduler(
        request.scheduler,
        host.scheduler_config,
        request.steps,
        torch.device("cpu"),
        request.karras_sigmas,
    )
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in request.seeds]
    noise = initial_noise(request, host, generators, device)
    n = request.num_images
    return RunningRequest(
        prepared=prepared,
        scheduler=scheduler,
        generators=generators,
        latents=noise * scheduler.init_noise_sigma,
        uncond=None if uncond is None else uncond.expand(n, *uncond.shape),
        cond=cond.expand(n, *cond.shape),
        step_kwargs=step_kwargs(scheduler, generators),
    )


def initial_noise(
    request: GenerationRequest,
    host: HostModel,
    generators: list[torch.Generator],
    device: torch.device,
) -> torch.Tensor:
    """``[n, C, H/f, W/f]`` float32 on ``device``, image i from ``generators[i]``."""
    assert request.width is not None and request.height is not None
    factor = host.vae_scale_factor
    shape = (
        request.num_images,
        host.latent_channels,
        request.height // factor,
        request.width // factor,
    )
    return randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
