"""Plain, frozen request and result types of the textinv client.

These are what callers of :mod:`client` pass and get back; protobuf never leaks past the client
module (see ``client/convert.py``). Fields left ``None`` mean "the server's default", and the
server reports what it resolved (for example the seed it picked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

# A seed is a uint64 on the wire.
MAX_SEED = 2**64 - 1
# K, the number of vectors per concept, as the trainer allows it (issue 3).
MAX_VECTORS = 16


class Scheduler(str, Enum):
    """Noise schedulers; the values are the command line's spellings."""

    DDIM = "ddim"
    EULER = "euler"
    EULER_ANCESTRAL = "euler-ancestral"
    DPM_SOLVER_PP_2M = "dpmpp-2m"
    PNDM = "pndm"


class ConceptProperty(str, Enum):
    """What a concept depicts; selects the trainer's prompt templates."""

    OBJECT = "object"
    STYLE = "style"


class LrSchedule(str, Enum):
    """Learning-rate schedule of an inversion job."""

    CONSTANT = "constant"
    COSINE = "cosine"


class Precision(str, Enum):
    """Precision of the frozen model while training."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class JobState(str, Enum):
    """Lifecycle of an inversion job."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1 (or None for the default), got {value}")


def _check_multiple_of_8(name: str, value: int | None) -> None:
    if value is not None and (value < 8 or value % 8 != 0):
        raise ValueError(f"{name} must be a positive multiple of 8, got {value}")


def _check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")


@dataclass(frozen=True)
class GenerateRequest:
    """One generation. ``None`` means the server's default (native size, a random seed)."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    guidance_scale: float | None = None
    # Image i of the request uses seed + i; None lets the server pick and report the seed.
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_images: int = 1
    # None means the server's default scheduler (DDIM).
    scheduler: Scheduler | None = None

    def __post_init__(self) -> None:
        # Cheap checks that save a round trip; the server validates everything again.
        if not self.prompt.strip():
            raise ValueError(f"prompt must not be empty, got {self.prompt!r}")
        _check_positive("steps", self.steps)
        _check_positive("num_images", self.num_images)
        if self.guidance_scale is not None and self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        _check_multiple_of_8("width", self.width)
        _check_multiple_of_8("height", self.height)
        _check_seed(self.seed)


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
    """The images of one request, PNG-encoded, with the seed of each (``seeds[i] == seed + i``)."""

    images: tuple[bytes, ...]
    seeds: tuple[int, ...]
    seed: int
    timings: StageTimings
    warnings: tuple[str, ...] = ()


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

    token: str
    init_text: str
    num_vectors: int = 1
    property: ConceptProperty = ConceptProperty.OBJECT
    steps: int | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    learning_rate: float | None = None
    scale_lr: bool = False
    lr_schedule: LrSchedule | None = None
    warmup_steps: int | None = None
    resolution: int | None = None
    precision: Precision | None = None
    seed: int | None = None
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise ValueError(f"token must not be empty, got {self.token!r}")
        if not self.init_text.strip():
            raise ValueError(f"init_text must not be empty, got {self.init_text!r}")
        if not 1 <= self.num_vectors <= MAX_VECTORS:
            raise ValueError(f"num_vectors must be in 1..{MAX_VECTORS}, got {self.num_vectors}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
            _check_positive(name, getattr(self, name))
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        _check_multiple_of_8("resolution", self.resolution)
        _check_seed(self.seed)


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


@dataclass(frozen=True)
class ModelInfo:
    """The served base model's identity and shape."""

    name: str
    sha256: str
    family: str
    embedding_dim: int
    max_prompt_tokens: int
    native_width: int
    native_height: int
    prediction_type: str


@dataclass(frozen=True)
class TensorProfile:
    """The (min, opt, max) shapes one compiled input accepts."""

    name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]


@dataclass(frozen=True)
class EngineProfile:
    """Shape profile and precision of one exported component."""

    component: str
    precision: str
    inputs: tuple[TensorProfile, ...] = ()


@dataclass(frozen=True)
class Limits:
    """The server's configured limits (see proto Limits for each one's meaning)."""

    max_request_bytes: int = 0
    max_image_pixels: int = 0
    max_images_per_request: int = 0
    max_steps: int = 0
    max_prompt_chars: int = 0
    max_concepts_per_prompt: int = 0
    max_concept_file_bytes: int = 0
    max_images_per_job: int = 0
    max_concurrent_jobs: int = 0
    max_batch: int = 0
    batch_wait_ms: int = 0
    max_queue: int = 0


@dataclass(frozen=True)
class ServerInfo:
    """What a server runs and allows."""

    model: ModelInfo | None
    backend: str
    device: str
    execution_providers: tuple[str, ...]
    engine_profiles: tuple[EngineProfile, ...]
    limits: Limits
    schedulers: tuple[Scheduler, ...]
    server_version: str
    api_version: str
    library_versions: dict[str, str] = field(default_factory=dict)
