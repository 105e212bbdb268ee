"""What a server reports about itself (``GetServerInfo``): its model, compiled graphs' profiles
and limits. Re-exported by ``textinv_client.types``, where callers import them from."""

from __future__ import annotations

from dataclasses import dataclass, field

from textinv_client.choices import Scheduler


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
    text_encoder_layers: int = 0  # 0 from a server that predates clip skip
    # Each text encoder's width: (embedding_dim,), or SDXL's (clip_l, clip_g); () from a server
    # that predates it.
    text_encoder_widths: tuple[int, ...] = ()


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
    max_queued_jobs: int = 0
    max_job_steps: int = 0
    max_guidance_scale: float = 0.0
    max_token_chars: int = 0
    max_init_text_chars: int = 0
    max_caption_chars: int = 0
    max_filename_chars: int = 0
    max_page_token_chars: int = 0
    max_page_size: int = 0
    max_job_id_chars: int = 0
    max_training_resolution: int = 0
    max_concepts: int = 0
    max_stored_jobs: int = 0
    job_retention_seconds: int = 0
    max_job_bytes: int = 0
    max_job_attempts: int = 0
    max_training_pixels_per_step: int = 0
    max_training_image_pixels: int = 0
    max_prompt_chunks: int = 0
    max_init_image_pixels: int = 0


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
    # What generation computes in ("bf16"), why ("auto: the CPU has AMX-BF16"), and the CPU's
    # extensions; empty from a server older than these fields.
    precision: str = ""
    precision_reason: str = ""
    cpu_instruction_sets: tuple[str, ...] = ()
    # Where the server keeps its state ("sqlite" or "postgresql"), which replica answered (host
    # name and process id), and the tenant of the caller's API key ("default" without keys);
    # empty from a server older than these fields.
    store: str = ""
    replica_id: str = ""
    tenant: str = ""
