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

from textinv.sdxl_text import sdxl_time_ids as time_ids
from textinv_server.host_model import HostModel
from textinv_server.pipeline.init_images import noised_init_latents, posterior_samples
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
    # The step of the shared schedule at which the request joins the loop: 0, or img2img's
    # first step (init_images).
    start_index: int = 0
    # SDXL's added conditioning: pooled text_embeds [n, P] per half, and time_ids [n, 6].
    pooled_uncond: torch.Tensor | None = None
    pooled_cond: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def request(self) -> GenerationRequest:
        return self.prepared.request


def start_request(
    prepared: PreparedRequest,
    host: HostModel,
    device: torch.device,
    uncond: torch.Tensor | None,
    cond: torch.Tensor,
    init_parameters: torch.Tensor | None = None,
    pooled: tuple[torch.Tensor | None, torch.Tensor] | None = None,
) -> RunningRequest:
    """Per-image generators, a fresh scheduler, and the initial latents as diffusers draws them:
    noise, or with img2img's ``init_parameters`` (the VAE posterior's ``[1, 2C, h, w]``) the
    init image's latents noised to the request's first step.

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
    start = 0
    if init_parameters is None:
        latents = initial_noise(request, host, generators, device) * scheduler.init_noise_sigma
    else:  # each generator: a posterior sample, then the noise
        init = posterior_samples(init_parameters, generators) * host.latent_scaling
        noise = initial_noise(request, host, generators, device)
        start, latents = noised_init_latents(request, scheduler, init, noise)
    n = request.num_images
    running = RunningRequest(
        prepared=prepared,
        scheduler=scheduler,
        generators=generators,
        latents=latents,
        uncond=None if uncond is None else uncond.expand(n, *uncond.shape),
        cond=cond.expand(n, *cond.shape),
        step_kwargs=step_kwargs(scheduler, generators),
        start_index=start,
    )
    if pooled is not None:
        pooled_uncond, pooled_cond = pooled
        running.pooled_uncond = None if pooled_uncond is None else pooled_uncond.expand(n, -1)
        running.pooled_cond = pooled_cond.expand(n, -1)
        running.time_ids = sdxl_time_ids(request).expand(n, -1)
    return running


def sdxl_time_ids(request: GenerationRequest) -> torch.Tensor:
    """``[6]``: SDXL's original size, crop's top-left corner and target size, as diffusers
    sets them by default for a generation: (H, W, 0, 0, H, W)."""
    assert request.width is not None and request.height is not None
    size = (request.height, request.width)
    return time_ids(torch.tensor([[*size, 0, 0]], dtype=torch.float32), size)[0]


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
