"""What a caller asks the generation pipeline for, and what it gets back.

Plain frozen dataclasses: the gRPC layer converts protobuf to these at its edge and back
(``textinv_server.convert``), and ``GenerationRequest.check`` is the one place a generation
request is checked against the server's ``Limits`` (the one source of limits). The pipeline adds
only what needs the backend (its shape profile) and the registry (which concepts exist).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace

from textinv.choices import coerce_choices
from textinv.errors import InvalidInputError, quote
from textinv.prompt_syntax import embedding_names
from textinv.prompts import PLACEHOLDER
from textinv_client.choices import ImageFormat, PromptSyntax, Scheduler
from textinv_server.config import Limits

# A seed is a uint64 on the wire; image i of a request uses (seed + i) mod 2^64.
SEED_MODULUS = 2**64
# Pixel sizes are multiples of this (the UNet's latent grid is H/vae_scale_factor).
SIZE_MULTIPLE = 8
# JPEG and WebP without a quality.
DEFAULT_QUALITY = 90
# img2img without a strength, as in diffusers.
DEFAULT_STRENGTH = 0.8
# More than any CLIP text encoder has layers (SD's have 12, 24 and 32); the model bounds it too.
MAX_CLIP_SKIP = 64


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt → ``num_images`` images. ``seed``/``width``/``height`` None: see ``resolved``.

    Image i is drawn from (seed + i) mod 2^64 (its own CPU generator, which takes any uint64), so
    an image never depends on the number of images in its request or on its batch mates.
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
    prompt_syntax: PromptSyntax = PromptSyntax.PLAIN
    karras_sigmas: bool = False  # Euler, DPM++ 2M and DPM++ 2M SDE only
    # Text-encoder layers to skip before the final layer norm (diffusers' clip_skip: 1 is the
    # penultimate layer); per row of the text encoder, so it is no part of the batch key.
    clip_skip: int = 0
    # img2img: the encoded start image (PNG, JPEG or WebP) and how much of it to repaint, as
    # diffusers' strength (1: only its size is kept); None: text-to-image, DEFAULT_STRENGTH.
    init_image: bytes | None = field(default=None, repr=False)  # megabytes: never in a log
    strength: float | None = None
    output_format: ImageFormat = ImageFormat.PNG
    quality: int | None = None  # JPEG and WebP only; None: DEFAULT_QUALITY
    # SDXL: the texts for its second text encoder, as diffusers' prompt_2; "" takes the first's.
    prompt_2: str = ""
    negative_prompt_2: str = ""

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
        return tuple((self.seed + i) % SEED_MODULUS for i in range(self.num_images))

    @property
    def effective_strength(self) -> float:
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    @property
    def denoising_steps(self) -> int:
        """The steps this request runs: all of them, or img2img's last ``steps × strength``."""
        if self.init_image is None:
            return self.steps
        return min(int(self.steps * self.effective_strength), self.steps)

    @property
    def effective_quality(self) -> int:
        return DEFAULT_QUALITY if self.quality is None else self.quality

    def resolved(self, default_size: int) -> GenerationRequest:
        """A copy with a concrete seed (random when None) and size (``default_size`` when None)."""
        seed = self.seed if self.seed is not None else secrets.randbelow(2**63)
        return replace(
            self,
            seed=seed,
            width=default_size if self.width is None else self.width,
            height=default_size if self.height is None else self.height,
        )

    def prompts(self) -> tuple[str, ...]:
        """The texts in which concepts may be named."""
        return self.prompt, self.negative_prompt, self.prompt_2, self.negative_prompt_2

    def encoder_texts(self, second: bool = False) -> tuple[str, str]:
        """``(prompt, negative_prompt)`` for the first text encoder, or for SDXL's second."""
        if not second:
            return self.prompt, self.negative_prompt
        return self.prompt_2 or self.prompt, self.negative_prompt_2 or self.negative_prompt

    @property
    def empty_negative(self) -> bool:
        """No negative text for either encoder: the one an SDXL model may make all zeros."""
        return not self.negative_prompt and not self.negative_prompt_2

    def batch_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batch (one UNet call per step)."""
        return (
            self.width,
            self.height,
            self.steps,
            self.scheduler,
            self.karras_sigmas,  # it changes the timesteps every request of a batch shares
            self.uses_guidance,
        )

    def check(self, limits: Limits, default_size: int | None = None) -> None:
        """Raise ``InvalidInputError`` naming the first bad field; O(1) in every value but the
        prompts' lengths. ``default_size`` stands in for an unset width or height."""
        check_text("prompt", self.prompt, limits.max_prompt_chars)
        if not self.prompt.strip():
            raise InvalidInputError(f"prompt must not be empty, got {quote(self.prompt)}")
        check_text("negative_prompt", self.negative_prompt, limits.max_prompt_chars)
        check_text("prompt_2", self.prompt_2, limits.max_prompt_chars)
        check_text("negative_prompt_2", self.negative_prompt_2, limits.max_prompt_chars)
        check_int("steps", self.steps, 1, limits.max_steps)
        check_int("num_images", self.num_images, 1, limits.max_images_per_request)
        _check_guidance(self.guidance_scale, limits.max_guidance_scale)
        if self.seed is not None:
            check_int("seed", self.seed, 0, SEED_MODULUS - 1)
        # img2img's unset sides come from its image (GenerationPipeline.prepare checks them).
        self._check_size(limits, None if self.init_image is not None else default_size)
        self._check_options()
        self._check_init_image(limits)
        named = {name for text in self.prompts() for name in PLACEHOLDER.findall(text)}
        if self.prompt_syntax is PromptSyntax.A1111:
            named |= {name for text in self.prompts() for name in embedding_names(text)}
        if len(named) > limits.max_concepts_per_prompt:
            raise InvalidInputError(
                f"the prompts name {len(named)} concepts; the limit is "
                f"{limits.max_concepts_per_prompt}"
            )

    def _check_options(self) -> None:
        """The scheduler, text-encoder and output options, named when bad. ``clip_skip``'s
        upper bound is the model's (``GenerationPipeline.prepare``)."""
        check_int("clip_skip", self.clip_skip, 0, MAX_CLIP_SKIP)
        if self.karras_sigmas and not self.scheduler.takes_karras_sigmas:
            takes = " and ".join(s.value for s in Scheduler if s.takes_karras_sigmas)
            raise InvalidInputError(
                f"karras_sigmas: scheduler {self.scheduler.value} has no Karras schedule; "
                f"{takes} do"
            )
        if self.quality is not None:
            if self.output_format is ImageFormat.PNG:
                raise InvalidInputError("quality applies to jpeg and webp, not to png")
            check_int("quality", self.quality, 1, 100)

    def _check_init_image(self, limits: Limits) -> None:
        """img2img's fields; the image itself is read in ``GenerationPipeline.prepare``."""
        if self.init_image is None:
            if self.strength is not None:
                raise InvalidInputError("strength applies to img2img: send an init_image too")
            return
        if not isinstance(self.init_image, bytes) or not self.init_image:
            raise InvalidInputError("init_image must be the bytes of a PNG, JPEG or WebP file")
        if len(self.init_image) > limits.max_request_bytes:
            raise InvalidInputError(
                f"init_image is {len(self.init_image)} bytes; the limit is "
                f"{limits.max_request_bytes}"
            )
        strength = self.strength
        if strength is not None and (
            isinstance(strength, bool)
            or not isinstance(strength, int | float)
            or not (math.isfinite(strength) and 0.0 < strength <= 1.0)
        ):
            raise InvalidInputError(f"strength must be in (0, 1], got {quote(strength)}")
        if self.denoising_steps < 1:
            raise InvalidInputError(
                f"strength {self.effective_strength:g} of {self.steps} steps runs no step: "
                f"steps × strength must be at least 1"
            )

    def _check_size(self, limits: Limits, default_size: int | None) -> None:
        sides = []
        for name, size in (("width", self.width), ("height", self.height)):
            if size is None:
                sides.append(default_size)
                continue
            check_int(name, size, SIZE_MULTIPLE, limits.max_image_pixels // SIZE_MULTIPLE)
            if size % SIZE_MULTIPLE:
                raise InvalidInputError(
                    f"{name} must be a positive multiple of {SIZE_MULTIPLE}, got {size!r}"
                )
            sides.append(size)
        width, height = sides
        if width is not None and height is not None and width * height > limits.max_image_pixels:
            raise InvalidInputError(
                f"{width}×{height} is {width * height} pixels; the limit is "
                f"{limits.max_image_pixels}"
            )


def check_text(name: str, value: object, max_chars: int) -> None:
    """``value`` is text of at most ``max_chars`` characters; the error quotes a prefix only."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {quote(value)}")
    if len(value) > max_chars:
        raise InvalidInputError(
            f"{name} is {len(value)} characters; the limit is {max_chars} (got {quote(value)})"
        )


def check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an integer in {low}..{high}, got {quote(value)}")


def _check_guidance(guidance: object, high: float) -> None:
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, int | float)
        or not (math.isfinite(guidance) and 0.0 <= guidance <= high)
    ):
        raise InvalidInputError(f"guidance_scale must be in 0..{high:g}, got {guidance!r}")


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
    """The images of one request encoded as ``request.output_format``, with the seed of each
    (``seeds[i] == seed + i``)."""

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
