"""The server's configuration: where it listens, what it serves, and every limit it enforces.

All limits are configurable from ``textinv serve`` and all are reported by ``GetServerInfo``.
Each field that is a flag of ``textinv serve`` says so (``textinv_client.flags``): its name, its
help and its default are written here once, and ``serve_command`` derives the flags from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textinv.choices import coerce_choices
from textinv.concept_tokens import MAX_TOKEN_LENGTH
from textinv.data import MAX_CAPTION_CHARS
from textinv.prompts import DEFAULT_MAX_CHUNKS
from textinv_client.choices import Precision
from textinv_client.flags import Flag, flag
from textinv_server.choices import BackendName, Provider

MIB = 1 << 20
LIMITS_GROUP = "limits (all reported by GetServerInfo)"
BATCHING_GROUP = "batching (requests of one shape share one UNet call per step)"
TLS_GROUP = "TLS (--tls-cert and --tls-key together; off without them)"


def _limit(default: int, help: str) -> int:
    """A limit field: a flag of the limits group."""
    return field(default=default, metadata=flag(help, group=LIMITS_GROUP))


@dataclass(frozen=True)
class Limits:
    # gRPC's default of 4 MiB is too small for a job's images; uploads are bounded here instead.
    max_request_bytes: int = _limit(64 * MIB, "largest request or reply, in bytes")
    max_image_pixels: int = _limit(1024 * 1024, "largest width × height of a generated image")
    max_images_per_request: int = _limit(8, "images one generate request may ask for")
    max_steps: int = _limit(150, "denoising steps one generate request may ask for")
    max_prompt_chars: int = _limit(2000, "longest prompt or negative prompt, in characters")
    max_concepts_per_prompt: int = _limit(8, "concepts the prompts of one request may name")
    max_prompt_chunks: int = _limit(
        DEFAULT_MAX_CHUNKS, "75-token chunks of one prompt under the a1111 syntax"
    )
    max_concept_file_bytes: int = _limit(8 * MIB, "largest concept file to register, in bytes")
    max_images_per_job: int = _limit(16, "training images one inversion job may upload")
    max_concurrent_jobs: int = _limit(1, "inversion jobs that train at once")
    max_queued_jobs: int = _limit(16, "inversion jobs that may wait; more are refused")
    max_job_steps: int = _limit(20000, "training steps one inversion job may ask for")
    max_guidance_scale: float = field(
        default=50.0,
        metadata=flag("largest guidance scale a generate request may ask for", group=LIMITS_GROUP),
    )
    max_token_chars: int = _limit(MAX_TOKEN_LENGTH, "longest concept token, in characters")
    max_init_text_chars: int = _limit(1000, "longest initializer text of a job, in characters")
    max_caption_chars: int = _limit(
        MAX_CAPTION_CHARS, "longest caption of a training image, in characters"
    )
    max_filename_chars: int = _limit(255, "longest file name of an upload, in characters")
    max_page_token_chars: int = _limit(128, "longest page token, in characters")
    max_page_size: int = _limit(1000, "most concepts or jobs one list page returns")
    max_job_id_chars: int = _limit(64, "longest job id a request may name, in characters")
    max_training_resolution: int = _limit(1024, "largest training side of a job, in pixels")
    max_concepts: int = _limit(10_000, "concepts one tenant may hold; registering more is refused")
    max_stored_jobs: int = _limit(256, "jobs whose files are kept; creating more is refused")
    job_retention_seconds: int = _limit(7 * 24 * 3600, "seconds a finished job's files are kept")
    max_job_bytes: int = _limit(128 * MIB, "bytes one job may store (uploads, checkpoints)")
    max_job_attempts: int = _limit(3, "starts of a job after server crashes before it fails")
    # One micro-step's memory and time grow with batch_size × resolution², and a step cannot be
    # cancelled inside: 4 images of 512 × 512 is what the diffusers example trains with.
    max_training_pixels_per_step: int = _limit(
        4 * 512 * 512, "largest batch_size × resolution² of one job's micro-step, in pixels"
    )
    max_training_image_pixels: int = _limit(
        2048 * 2048, "largest width × height of a job's uploaded training image"
    )
    max_init_image_pixels: int = _limit(
        2048 * 2048, "largest width × height of a generate request's init image (img2img)"
    )


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = field(
        default=4, metadata=flag("requests in one batch at most", group=BATCHING_GROUP)
    )
    batch_wait_ms: float = field(
        default=10.0,
        metadata=flag("how long a batch waits for more requests, in ms", group=BATCHING_GROUP),
    )
    max_queue: int = field(
        default=64,
        metadata=flag("requests that may wait; more are refused at once", group=BATCHING_GROUP),
    )


def _tls_flag(help: str, name: str) -> dict[str, Flag]:
    return flag(help, name=name, metavar="PEM", group=TLS_GROUP)


@dataclass(frozen=True)
class TlsConfig:
    cert: Path = field(metadata=_tls_flag("server certificate (PEM)", "--tls-cert"))
    key: Path = field(metadata=_tls_flag("server private key (PEM)", "--tls-key"))
    # set: clients must present a certificate signed by it (mTLS)
    client_ca: Path | None = field(
        default=None, metadata=_tls_flag("require client certificates (mTLS)", "--tls-client-ca")
    )


@dataclass(frozen=True)
class ServerConfig:
    # a model folder or hub id; None: the embedded default model
    model: str | None = field(
        metadata=flag("a diffusers model folder or hub id (default: embedded)")
    )
    data_dir: Path = field(metadata=flag("state folder", name="--data", metavar="DIR"))
    host: str = field(default="127.0.0.1", metadata=flag("address to listen on (0.0.0.0: all)"))
    port: int = field(default=50051, metadata=flag("0 picks a free port"))  # 0 in tests
    backend: BackendName = field(
        default=BackendName.TORCH, metadata=flag("torch | onnxruntime | tensorrt")
    )
    engines: Path | None = field(
        default=None, metadata=flag("the export stage's folder (manifest inside)", metavar="DIR")
    )
    device: str = field(
        default="cpu",
        metadata=flag("cpu or cuda[:N]: torch's device; the GPU of tensorrt and onnxruntime's"),
    )
    provider: Provider = field(
        default=Provider.CPU, metadata=flag("onnxruntime: cpu, cuda or tensorrt")
    )
    weights: Precision = field(
        default=Precision.AUTO,
        metadata=flag(
            "torch: the weights' precision; auto: bf16 where the CPU has AMX-BF16 or "
            "AVX512-BF16, else fp32"
        ),
    )
    channels_last: bool = field(default=False, metadata=flag("torch: NHWC UNet"))
    cuda_graph: bool = field(default=False, metadata=flag("torch on CUDA: graph replay"))
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata=flag(
            "accept this key (repeatable; also $TEXTINV_API_KEYS, comma-separated)",
            name="--api-key",
            metavar="KEY",
        ),
    )
    keys_file: Path | None = field(
        default=None,
        metadata=flag(
            "API keys with tenants and roles: a JSON file of hashed keys (see `textinv keys`); "
            "also $TEXTINV_KEYS_FILE",
            name="--keys",
            metavar="FILE",
        ),
    )
    store: str = field(
        default="sqlite",
        metadata=flag(
            "where state lives: sqlite (the --data folder, one server) or a postgresql:// URL "
            "shared by every replica and worker; also $TEXTINV_STORE",
            metavar="URL",
        ),
    )
    workers: bool = field(
        default=True,
        metadata=flag(
            "run no inversion jobs here (a `textinv worker` pool trains them)",
            name="--no-workers",
        ),
    )
    lease_seconds: float = field(
        default=30.0,
        metadata=flag(
            "a training job's lease: when its worker stops renewing it (it died) for this long, "
            "another worker resumes the job",
            metavar="SECONDS",
        ),
    )
    tls: TlsConfig | None = None
    metrics_port: int | None = field(
        default=None, metadata=flag("serve Prometheus /metrics on this port")
    )
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    grace_seconds: float = field(
        default=10.0, metadata=flag("shutdown grace in seconds", name="--grace", metavar="SECONDS")
    )
    warmup: bool = field(
        default=True, metadata=flag("skip the warm-up generation", name="--no-warmup")
    )
    # Torch threads for generation; inversion jobs get what is left (see textinv_server.jobs).
    generation_threads: int | None = None

    def __post_init__(self) -> None:
        coerce_choices(self)  # callers may write backend="onnxruntime"
