"""What a caller asks the generation pipeline for, and what it gets back.

Plain frozen dataclasses: the gRPC layer converts protobuf to these at its edge and back. Every
check that can be made without the model is made here (``check_request``); the pipeline adds the
checks that need the backend's shape limits.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, replace

from textinv.choices import coerce_choices
from textinv.errors import InvalidInputError
from textinv_client.choices import Scheduler

# A seed is a uint64 on the wire; image i of a request uses seed + i, which must fit too.
MAX_SEED = 2**64 - 1
MAX_STEPS = 500
MAX_GUIDANCE = 50.0
MAX_IMAGES = 16
# Pixel sizes are multiples of this (the UNet's latent grid is H/vae_scale_factor).
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt → ``num_images`` images. ``seed``/``width``/``height`` None: see ``resolved``.

    Image i is drawn from seed + i (its own CPU generator), so an image never depends on the
    number of images in its request or on the requests batched beside it.
    """

    prompt: str
    negative_prompt: str = ""
    steps: int = 30
    guidance_scale: float = 7.5  # ≤ 1 turns guidance off, as in diffusers
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    scheduler: Scheduler = Scheduler.DDIM

    def __post_init__(self) -> None:
        coerce_choices(self)  # a caller's "euler" becomes Scheduler.EULER, or names the value

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance runs only above 1, exactly when diffusers runs it."""
        return self.guidance_scale > 1.0

    @property
    def seeds(self) -> tuple[int, ...]:
        if self.seed is None:
            raise InvalidInputError("the request has no seed yet; call resolved() first")
        return tuple(self.seed + i for i in range(self.num_images))

    def resolved(self, default_size: int) -> GenerationRequest:
        """A copy with a concrete seed (random when None) and size (``default_size`` when None)."""
        seed = self.seed if self.seed is not None else secrets.randbelow(2**63)
        return replace(
            self,
            seed=seed,
            width=default_size if self.width is None else self.width,
            height=default_size if self.height is None else self.height,
        )

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batch (one UNet call per step)."""
        return (self.width, self.height, self.steps, self.scheduler, self.uses_guidance)


def check_request(request: GenerationRequest) -> None:
    """Raise ``InvalidInputError`` naming the first bad value of a resolved request."""
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise InvalidInputError(f"prompt must not be empty, got {request.prompt!r}")
    if not isinstance(request.negative_prompt, str):
        raise InvalidInputError(f"negative_prompt must be text, got {request.negative_prompt!r}")
    _check_int_range("steps", request.steps, 1, MAX_STEPS)
    _check_int_range("num_images", request.num_images, 1, MAX_IMAGES)
    guidance = request.guidance_scale
    if not isinstance(guidance, int | float) or not (
        math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE
    ):
        raise InvalidInputError(f"guidance_scale must be in 0..{MAX_GUIDANCE:g}, got {guidance!r}")
    for name, size in (("width", request.width), ("height", request.height)):
        if not isinstance(size, int) or size < SIZE_MULTIPLE or size % SIZE_MULTIPLE:
            raise InvalidInputError(
                f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {size!r}"
            )
    seed = request.seed
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - (request.num_images - 1):
        raise InvalidInputError(
            f"seed must be in 0..2**64-1 with room for seed + num_images - 1, got {seed!r}"
        )


def _check_int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an integer in {low}..{high}, got {value!r}")


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds per stage of the batch a request ran in (``batch_size`` requests)."""

    text_encoder_ms: float
    unet_total_ms: float
    unet_step_ms: tuple[float, ...]  # one per UNet evaluation, including any CFG pass
    vae_decode_ms: float
    total_ms: float
    batch_size: int = 1

    @property
    def unet_step_mean_ms(self) -> float:
        return self.unet_total_ms / max(len(self.unet_step_ms), 1)


@dataclass(frozen=True)
class GenerationResult:
    """The images of one request as PNG bytes, with the seed of each (``seeds[i] == seed + i``)."""

    images: tuple[bytes, ...]
    seeds: tuple[int, ...]
    request: GenerationRequest  # as resolved: concrete seed and size
    timings: StageTimings
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepProgress:
    """Denoising step ``step`` (1-based) of ``total_steps`` finished, in ``step_ms``."""

    step: int
    total_steps: int
    step_ms: float
