"""TensorRT engines from the exported ONNX graphs: building them, and what decides their bytes.

Written against the TensorRT 10 Python API (``tensorrt``), which needs an NVIDIA GPU with CUDA.
Nothing imports ``tensorrt`` at module level: without it ``require_tensorrt`` raises at once with
what is missing and how to install it, and the pure helpers (cache keys, file names, builder
flags, the timing-cache decision) still work and are tested on CPU.

``build_engine``: ONNX parser → network, one optimization profile from the spec, the flag of the
precision asked for only, a timing cache per TensorRT version and GPU. The engine's file name
carries the TensorRT version and its cache key (model, raw graph and external weights); an engine
whose key matches is reused. Running an engine is ``textinv_export.tensorrt_engine``'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from textinv.errors import TextInvError
from textinv.fileio import atomic_write_bytes
from textinv_export.choices import Precision
from textinv_export.specs import ComponentSpec, ShapeProfile

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'textinv[gpu]' on a machine with an NVIDIA GPU and CUDA"
WORKSPACE_BYTES = 8 << 30  # the builder's scratch memory limit; tactics that need more are skipped


class TensorRTUnavailableError(TextInvError):
    """TensorRT or CUDA is missing on this machine."""


class EngineBuildError(TextInvError):
    """TensorRT could not parse a graph, build an engine from it, load an engine or run it."""


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here, or ``None`` if it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the 'tensorrt' Python package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "CUDA is not available (no NVIDIA GPU, or a CPU-only torch build)"
    return None


def require_tensorrt() -> None:
    """Raise ``TensorRTUnavailableError`` naming what is missing and how to install it."""
    reason = tensorrt_missing()
    if reason is not None:
        raise TensorRTUnavailableError(
            f"--target tensorrt needs TensorRT and CUDA: {reason}. Install with: {INSTALL_HINT}"
        )


@dataclass(frozen=True)
class GpuIdentity:
    name: str  # "NVIDIA H200"
    compute_capability: str  # "9.0"

    @property
    def slug(self) -> str:
        name = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return f"{name}.sm{self.compute_capability.replace('.', '')}"

    @classmethod
    def current(cls, device: int | None = None) -> GpuIdentity:
        """The GPU ``device`` (default: the current one, which TensorRT builds on)."""
        import torch

        device = torch.cuda.current_device() if device is None else device
        major, minor = torch.cuda.get_device_capability(device)
        return cls(torch.cuda.get_device_name(device), f"{major}.{minor}")


def engine_cache_key(
    model_hash: str,
    source_sha256s: Sequence[str],
    tensorrt_version: str,
    gpu: GpuIdentity,
    profile: Mapping[str, ShapeProfile],
    precision: Precision,
) -> str:
    """sha256 over everything that decides an engine's bytes: change any, rebuild.
    ``source_sha256s``: every file the ONNX parser reads, the raw graph and (over 2 GB, where
    the weights are) its external data file ``<name>.onnx.data``."""
    facts = {
        "model_hash": model_hash,
        "sources": list(source_sha256s),
        "tensorrt": tensorrt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "profile": {name: p.to_dict() for name, p in sorted(profile.items())},
        "precision": precision.value,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def engine_filename(component: str, precision: Precision, tensorrt_version: str, key: str) -> str:
    """``unet.fp16.trt10.8.0.43.3f2a1b9c0d4e.plan``: the version and key are in the name."""
    return f"{component}.{precision.value}.trt{tensorrt_version}.{key[:12]}.plan"


def timing_cache_filename(tensorrt_version: str, gpu: GpuIdentity) -> str:
    """``timing_cache.trt10.8.0.43.nvidia-h200.sm90.cache``: one per TensorRT version and GPU,
    which TensorRT refuses to mix, so machines that share a folder never collide."""
    return f"timing_cache.trt{tensorrt_version}.{gpu.slug}.cache"


def precision_flags(precision: Precision) -> dict[str, bool]:
    """``trt.BuilderFlag`` member names to set (True) or clear (False) for ``precision``.

    Only the precision asked for: with FP16 and BF16 together TensorRT may pick bf16 kernels in an
    engine labelled fp16. TF32, on by default, is cleared for fp32 so fp32 engines compute in
    fp32. FP16 (and BF16) are deprecated from TensorRT 10.12 in favour of strongly typed networks
    and gone in TensorRT 11, hence the ``tensorrt>=10,<11`` pin of the ``gpu`` extra.
    """
    if precision is Precision.FP16:
        return {"FP16": True}
    if precision is Precision.FP32:
        return {"TF32": False}
    raise ValueError(f"TensorRT engines are built in fp32 or fp16, not {precision.value!r}")


def attach_timing_cache(config: Any, saved: bytes) -> Literal["saved", "new", "none"]:
    """Attach ``saved`` (a serialized cache, or ``b""``) to the ``IBuilderConfig``, else a new
    one; "none" if TensorRT took neither (the build then times every tactic).
    ``create_timing_cache`` returns None for bytes it cannot read; ``set_timing_cache(...,
    ignore_mismatch=False)`` returns False for a cache from another GPU or TensorRT version."""
    if saved:
        cache = config.create_timing_cache(saved)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return "saved"
    fresh = config.create_timing_cache(b"")
    if fresh is not None and config.set_timing_cache(fresh, ignore_mismatch=False):
        return "new"
    return "none"


def serialized_timing_cache(config: Any) -> bytes | None:
    """The config's timing cache after a build, or None when it has none to save."""
    cache = config.get_timing_cache()
    return None if cache is None else bytes(cache.serialize())


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    cache_key: str
    tensorrt_version: str
    gpu: GpuIdentity
    precision: Precision
    reused: bool


def build_engine(
    onnx_path: Path,
    spec: ComponentSpec,
    out_dir: Path,
    precision: Precision,
    *,
    model_hash: str,
    source_sha256s: Sequence[str],
    timing_cache: Path | None = None,
    force: bool = False,
) -> BuiltEngine:
    """Build the engine of ``onnx_path`` for ``spec``'s profile at ``precision``, or reuse the one
    whose cache key matches, unless ``force``."""
    require_tensorrt()
    import tensorrt as trt

    # 1. The cache key decides the file name; an engine already there is reused.
    gpu = GpuIdentity.current()
    version = str(trt.__version__)
    key = engine_cache_key(model_hash, source_sha256s, version, gpu, spec.profile, precision)
    path = Path(out_dir) / engine_filename(spec.name, precision, version, key)
    built = BuiltEngine(path, key, version, gpu, precision, reused=path.is_file() and not force)
    if built.reused:
        return built
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 2. Parse the graph (the parser reads external weights beside it).
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {str(onnx_path)!r}: {errors}")
    # 3. Precision flags, the optimization profile and the timing cache.
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for flag, on in precision_flags(precision).items():
        (config.set_flag if on else config.clear_flag)(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    for name, shapes in spec.profile.items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache or Path(out_dir) / timing_cache_filename(version, gpu))
    used = attach_timing_cache(config, cache_path.read_bytes() if cache_path.is_file() else b"")
    if used != "saved" and cache_path.is_file():
        log.warning("%s: TensorRT refused this timing cache; starting a new one", cache_path)
    # 4. Build, then keep the engine and the (grown) timing cache, each written atomically.
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine for {spec.name}; see its log")
    atomic_write_bytes(path, bytes(serialized))
    timings = serialized_timing_cache(config)
    if timings is not None:
        atomic_write_bytes(cache_path, timings)
    return built
