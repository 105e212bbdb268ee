"""The server's configuration: where it listens, what it serves, and every limit it enforces.

All limits are configurable from ``textinv serve`` and all are reported by ``GetServerInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    # gRPC's default of 4 MiB is too small for a job's images; uploads are bounded here instead.
    max_request_bytes: int = 64 * MIB
    max_image_pixels: int = 1024 * 1024
    max_images_per_request: int = 8
    max_steps: int = 150
    max_prompt_chars: int = 2000
    max_concepts_per_prompt: int = 8
    max_concept_file_bytes: int = 8 * MIB
    max_images_per_job: int = 16
    max_concurrent_jobs: int = 1
    max_queued_jobs: int = 16
    max_job_steps: int = 20000


@dataclass(frozen=True)
class BatchingConfig:
    max_batch: int = 4
    batch_wait_ms: float = 10.0
    max_queue: int = 64


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: clients must present a certificate signed by it (mTLS)


@dataclass(frozen=True)
class ServerConfig:
    model: str | None  # a model folder or hub id; None: the embedded default model
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 50051  # 0: the system picks a free port (tests)
    backend: str = "torch"
    engines: Path | None = None
    device: str = "cpu"  # torch backend: cpu or cuda[:N]
    provider: str = "cpu"  # onnxruntime backend: cpu, cuda or tensorrt
    weights: str | None = None  # torch backend: fp32, fp16 or bf16 (None: as stored)
    channels_last: bool = False
    cuda_graph: bool = False
    api_keys: tuple[str, ...] = ()
    tls: TlsConfig | None = None
    metrics_port: int | None = None
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    grace_seconds: float = 10.0
    warmup: bool = True
    # Torch threads for generation; inversion jobs get what is left (see textinv_server.jobs).
    generation_threads: int | None = None
