"""Plain, frozen request and result types of the textinv client.

These are what callers of :mod:`textinv_client` pass and get back; protobuf never leaks past the
client (see ``textinv_client.convert``). Fields left ``None`` mean "the server's default", and the
server reports what it resolved (for example the seed it picked). The fields of
:class:`GenerateRequest` and :class:`InversionParams` are also the command line's flags
(``textinv_client.flags``), so each flag's help lives beside its field. The closed choices are
``textinv_client.choices``' and are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from textinv_client.checks import MAX_SEED as MAX_SEED
from textinv_client.checks import MAX_TRAIN_SEED as MAX_TRAIN_SEED
from textinv_client.checks import MAX_VECTORS as MAX_VECTORS
from textinv_client.checks import (
    check_multiple_of_8,
    check_not_blank,
    check_positive,
    check_seed,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
    size_int,
    train_seed_int,
    unit_float,
)

# One home per closed choice; re-exported (``X as X``) so ``textinv_client.types.Scheduler`` stays.
from textinv_client.choices import ConceptProperty as ConceptProperty
from textinv_client.choices import ImageFormat as ImageFormat
from textinv_client.choices import JobState as JobState
from textinv_client.choices import LrSchedule as LrSchedule
from textinv_client.choices import Precision as Precision
from textinv_client.choices import PromptSyntax as PromptSyntax
from textinv_client.choices import Scheduler as Scheduler
from textinv_client.flags import flag
from textinv_client.server_types import EngineProfile as EngineProfile
from textinv_client.server_types import Limits as Limits
from textinv_client.server_types import ModelInfo as ModelInfo
from textinv_client.server_types import ServerInfo as ServerInfo
from textinv_client.server_types import TensorProfile as TensorProfile

_SIZE_HELP = "multiple of 8 (default: model's native)"


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. ``None`` means the server's default (native size, a random seed)."""

    # The help texts' defaults are the command line's (GENERATE_FLAG_DEFAULTS), not None.
    prompt: str = field(metadata=flag('e.g. "a photo of <cat-toy> on a beach"'))
    negative_prompt: str = field(default="", metadata=flag("what to steer away from"))
    steps: int | None = field(
        default=None, metadata=flag("denoising steps (30)", parse=positive_int)
    )
    guidance_scale: float | None = field(
        default=None,
        metadata=flag(
            "classifier-free guidance scale; 1 turns guidance off (7.5)",
            name="--guidance",
            metavar="GUIDANCE",
            parse=non_negative_float,
        ),
    )
    # Image i of the request uses seed + i; None lets the server pick and report the seed.
    seed: int | None = field(
        default=None,
        metadata=flag(
            "seed of the first image; image i uses SEED+i (default: random, and printed)",
            parse=seed_int,
        ),
    )
    width: int | None = field(default=None, metadata=flag(_SIZE_HELP, parse=size_int))
    height: int | None = field(default=None, metadata=flag(_SIZE_HELP, parse=size_int))
    num_images: int = field(default=1, metadata=flag("images to draw (1)", parse=positive_int))
    # None means the server's default scheduler (DDIM).
    scheduler: Scheduler | None = field(
        default=None,
        metadata=flag(
            "noise scheduler (ddim: deterministic and good at 30 steps on every backend)"
        ),
    )
    karras_sigmas: bool = field(
        default=False,
        metadata=flag(
            "Karras sigma schedule (euler, dpmpp-2m, dpmpp-2m-sde: 'DPM++ 2M Karras')",
            name="--karras",
        ),
    )
    clip_skip: int = field(
        default=0,
        metadata=flag(
            "text-encoder layers to skip, as diffusers' clip_skip: 1 is the penultimate layer "
            "(Automatic1111's 'Clip skip 2') (0)",
            parse=non_negative_int,
        ),
    )
    # img2img: the start image's file bytes (the command line's --init-image reads them), and
    # how much of it to repaint, in (0, 1]; None: text-to-image, and the server's 0.8.
    init_image: bytes | None = field(default=None, repr=False)
    strength: float | None = field(
        default=None,
        metadata=flag(
            "img2img: how much of --init-image to repaint, in (0, 1] (0.8)", parse=unit_float
        ),
    )
    # None means plain: the text as written, one 77-token window.
    prompt_syntax: PromptSyntax | None = field(
        default=None,
        metadata=flag(
            "how prompts are read: plain, or a1111 ((word:1.2) weights, BREAK, "
            "embedding:name, prompts past 75 tokens in chunks)",
            name="--syntax",
            metavar="SYNTAX",
        ),
    )
    # None means PNG.
    output_format: ImageFormat | None = field(
        default=None,
        metadata=flag("image encoding: png, jpeg or webp (png)", name="--format", metavar="FORMAT"),
    )
    quality: int | None = field(
        default=None, metadata=flag("jpeg/webp quality, 1..100 (90)", parse=positive_int)
    )
    # SDXL's second text encoder's texts, as diffusers' prompt_2; "" takes the first's.
    prompt_2: str = field(
        default="", metadata=flag("SDXL: the prompt for the second text encoder (--prompt)")
    )
    negative_prompt_2: str = field(
        default="",
        metadata=flag("SDXL: the negative prompt for the second text encoder (--negative-prompt)"),
    )

    def __post_init__(self) -> None:
        # Cheap checks that save a round trip; the server validates everything again.
        check_not_blank("prompt", self.prompt)
        check_positive("steps", self.steps)
        check_positive("num_images", self.num_images)
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        check_multiple_of_8("width", self.width)
        check_multiple_of_8("height", self.height)
        check_seed(self.seed)
        if self.clip_skip < 0:
            raise ValueError(f"clip_skip must be >= 0, got {self.clip_skip}")
        if self.strength is not None:
            if self.init_image is None:
                raise ValueError("strength applies to img2img: give an init image too")
            if not 0 < self.strength <= 1:
                raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")


# What the command line sends where the request leaves a field to the server.
GENERATE_FLAG_DEFAULTS = {"steps": 30, "guidance_scale": 7.5, "scheduler": Scheduler.DDIM}


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds spent per stage of one request (batch_size: requests in its micro-batch)."""

    queue_wait_ms: float = 0.0
    text_encoder_ms: float = 0.0
    unet_total_ms: float = 0.0
    unet_step_mean_ms: float = 0.0
    vae_decode_ms: float = 0.0
    total_ms: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class GenerateResult:
    """The images of one request, encoded as ``format``, with the seed of each
    (``seeds[i] == seed + i``)."""

    images: tuple[bytes, ...]
    seeds: tuple[int, ...]
    seed: int
    timings: StageTimings
    warnings: tuple[str, ...] = ()
    format: ImageFormat = ImageFormat.PNG


@dataclass(frozen=True)
class GenerateProgress:
    """A streamed generation finished denoising step ``step`` (1-based) of ``total_steps``."""

    step: int
    total_steps: int
    step_ms: float


# What GenerateStream yields: progress events, then exactly one GenerateResult.
GenerateEvent = GenerateProgress | GenerateResult


@dataclass(frozen=True)
class ConceptInfo:
    """A registered concept: its token, shape and provenance."""

    token: str
    num_vectors: int
    embedding_dim: int
    source_format: str
    size_bytes: int
    sha256: str
    created_at: datetime | None = None
    # The inversion job that learned it; empty for uploaded concepts.
    job_id: str = ""
    # Each vector set's width, one per text encoder: (embedding_dim,), or SDXL's (clip_l, clip_g).
    embedding_dims: tuple[int, ...] = ()


@dataclass(frozen=True)
class TrainingImage:
    """One training image; ``caption`` uses ``{}`` where the token goes."""

    data: bytes
    filename: str = ""
    caption: str | None = None

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError(f"training image {self.filename or '(unnamed)'!r} is empty")
        if self.caption is not None and "{}" not in self.caption:
            raise ValueError(
                f"caption of {self.filename or '(unnamed)'!r} must contain '{{}}' where the token"
                f" goes, got {self.caption!r}"
            )


@dataclass(frozen=True)
class InversionParams:
    """The trainer's parameters for an inversion job; ``None`` means the trainer's default."""

    # The flags are named as `textinv invert` names them; unset means the trainer's default.
    token: str = field(metadata=flag('the new pseudo-word, e.g. "<cat-toy>"'))
    init_text: str = field(
        metadata=flag('initializer text, e.g. "toy"', name="--init", metavar="INIT")
    )
    num_vectors: int = field(
        default=1,
        metadata=flag("vectors K, 1..16 (1)", name="--vectors", metavar="K", parse=positive_int),
    )
    property: ConceptProperty = field(
        default=ConceptProperty.OBJECT, metadata=flag("what the concept depicts (object)")
    )
    steps: int | None = field(default=None, metadata=flag("optimizer steps", parse=positive_int))
    batch_size: int | None = field(
        default=None, metadata=flag("images per micro-batch", parse=positive_int)
    )
    grad_accum: int | None = field(
        default=None, metadata=flag("micro-batches per step", parse=positive_int)
    )
    learning_rate: float | None = field(
        default=None,
        metadata=flag("learning rate", name="--lr", metavar="LR", parse=positive_float),
    )
    scale_lr: bool = field(default=False, metadata=flag("multiply --lr by batch size x grad accum"))
    lr_schedule: LrSchedule | None = field(
        default=None, metadata=flag("learning-rate schedule (default: the trainer's)")
    )
    warmup_steps: int | None = field(
        default=None,
        metadata=flag(
            "learning-rate warm-up steps", name="--warmup", metavar="STEPS", parse=non_negative_int
        ),
    )
    resolution: int | None = field(
        default=None, metadata=flag("training resolution, multiple of 8", parse=size_int)
    )
    precision: Precision | None = field(
        default=None, metadata=flag("precision of the frozen model (default: the trainer's)")
    )
    seed: int | None = field(
        default=None,
        metadata=flag("seed of the run, 0..2**63-1 (default: server picks)", parse=train_seed_int),
    )
    checkpoint_every: int | None = field(
        default=None, metadata=flag("checkpoint every N steps", parse=positive_int)
    )

    def __post_init__(self) -> None:
        check_not_blank("token", self.token)
        check_not_blank("init_text", self.init_text)
        if not 1 <= self.num_vectors <= MAX_VECTORS:
            raise ValueError(f"num_vectors must be in 1..{MAX_VECTORS}, got {self.num_vectors}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            check_positive(name, getattr(self, name))
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        check_multiple_of_8("resolution", self.resolution)
        check_seed(self.seed, MAX_TRAIN_SEED)


@dataclass(frozen=True)
class JobInfo:
    """The state of an inversion job. ``params`` holds every default as the server resolved it."""

    job_id: str
    state: JobState
    params: InversionParams | None
    num_images: int
    register_on_success: bool
    step: int
    total_steps: int
    loss: float | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Why the job failed; empty unless state is FAILED.
    error: str = ""
    # The token its concept was registered under; empty until a registering job succeeds.
    registered_token: str = ""


@dataclass(frozen=True)
class JobProgress:
    """A training step of a watched job finished."""

    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float


# What WatchJob yields: JobInfo first, at each state change and last (terminal), JobProgress
# in between.
JobEvent = JobProgress | JobInfo
