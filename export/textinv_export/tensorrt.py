"""TensorRT engines from the exported ONNX graphs, and the runtime wrapper the server uses.

Written against the TensorRT 10 Python API (``tensorrt``), which needs an NVIDIA GPU with CUDA.
Nothing here imports ``tensorrt`` at module level: on a machine without it, ``require_tensorrt``
raises at once with what is missing and how to install it, and the cache-key helpers still work.

- ``build_engine``: ONNX parser → network, one optimization profile from the spec, FP16 (plus BF16
  where the GPU has it, compute capability ≥ 8.0), a timing cache file kept between builds. The
  engine's file name carries the TensorRT version and its cache key; an engine whose key matches
  is reused, never rebuilt.
- ``TensorRTEngine``: deserialize, set input shapes, bind torch CUDA tensors by address, run with
  ``execute_async_v3`` on a stream, and optionally capture a CUDA graph for one static shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textinv.errors import TextInvError
from textinv.fileio import atomic_write_bytes
from textinv_export.choices import Precision
from textinv_export.specs import ComponentSpec, ShapeProfile

if TYPE_CHECKING:
    import torch

INSTALL_HINT = "pip install 'textinv[gpu]' on a machine with an NVIDIA GPU and CUDA"
TIMING_CACHE_NAME = "timing_cache.trt"
WORKSPACE_BYTES = 8 << 30  # the builder's scratch memory limit; tactics that need more are skipped


class TensorRTUnavailableError(TextInvError):
    """TensorRT or CUDA is missing on this machine."""


class EngineBuildError(TextInvError):
    """TensorRT could not parse a graph or build an engine from it."""


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
    def has_bf16(self) -> bool:
        return int(self.compute_capability.split(".")[0]) >= 8  # Ampere and newer

    @classmethod
    def current(cls, device: int = 0) -> GpuIdentity:
        import torch

        major, minor = torch.cuda.get_device_capability(device)
        return cls(torch.cuda.get_device_name(device), f"{major}.{minor}")


def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu: GpuIdentity,
    profile: Mapping[str, ShapeProfile],
    precision: Precision,
) -> str:
    """sha256 over everything that decides an engine's bytes: change any, rebuild."""
    facts = {
        "onnx_sha256": onnx_sha256,
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


@dataclass(frozen=True)
class BuiltEngine:
    path: Path
    cache_key: str
    tensorrt_version: str
    gpu: GpuIdentity
    precision: Precision
    bf16: bool
    reused: bool


def build_engine(
    onnx_path: Path,
    onnx_sha256: str,
    spec: ComponentSpec,
    out_dir: Path,
    precision: Precision,
    *,
    timing_cache: Path | None = None,
) -> BuiltEngine:
    """Build (or reuse) the engine of ``onnx_path`` for ``spec``'s profile at ``precision``."""
    require_tensorrt()
    import tensorrt as trt

    # 1. The cache key decides the file name; an engine already there is reused.
    gpu = GpuIdentity.current()
    version = str(trt.__version__)
    key = engine_cache_key(onnx_sha256, version, gpu, spec.profile, precision)
    path = Path(out_dir) / engine_filename(spec.name, precision, version, key)
    bf16 = precision is Precision.FP16 and gpu.has_bf16
    built = BuiltEngine(path, key, version, gpu, precision, bf16, reused=path.is_file())
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
    if precision is Precision.FP16:
        config.set_flag(trt.BuilderFlag.FP16)
        if bf16:
            config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for name, shapes in spec.profile.items():
        profile.set_shape(name, shapes.min, shapes.opt, shapes.max)
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache or Path(out_dir) / TIMING_CACHE_NAME)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    # 4. Build, then keep the engine and the (grown) timing cache, each written atomically.
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine for {spec.name}; see its log")
    atomic_write_bytes(path, bytes(serialized))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return built


class TensorRTEngine:
    """One deserialized engine with its execution context, fed and read as torch CUDA tensors.

    >>> engine = TensorRTEngine(Path("out/unet.fp16.trt10.x.plan"))  # doctest: +SKIP
    >>> noise = engine.infer({"sample": s, "timestep": t, "encoder_hidden_states": h})["noise_pred"]
    """

    def __init__(self, path: Path, device: int = 0) -> None:
        require_tensorrt()
        import tensorrt as trt
        import torch

        self.device = torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"{str(path)!r} is not an engine this TensorRT can load")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.stream = torch.cuda.Stream(self.device)
        self._graph: Any = None  # torch.cuda.CUDAGraph once captured
        self._static: dict[str, torch.Tensor] = {}

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run once on this engine's stream; returns fresh output tensors on the device."""
        import torch

        feeds = self._bind_inputs(inputs)
        outputs = self._bind_outputs()
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # inputs were written on the caller's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execute_async_v3 failed")
        current.wait_stream(self.stream)
        for tensor in (*feeds.values(), *outputs.values()):
            tensor.record_stream(self.stream)
        return outputs

    def capture(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Capture a CUDA graph for the shapes of ``inputs``; ``replay`` then reuses it."""
        import torch

        self._static = {n: t.clone() for n, t in self._bind_inputs(inputs).items()}
        self._bind_inputs(self._static)
        self._static.update(self._bind_outputs())
        # One plain run first: TensorRT finishes its shape-dependent setup outside the capture.
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self._graph = graph

    def replay(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copy ``inputs`` into the captured buffers and replay; shapes must be the captured ones.

        Returns the captured output buffers themselves: copy them before the next replay.
        """
        if self._graph is None:
            raise RuntimeError("replay() needs capture() first")
        for name in self.input_names:
            static = self._static[name]
            if tuple(inputs[name].shape) != tuple(static.shape):
                raise ValueError(
                    f"{name}: shape {tuple(inputs[name].shape)} is not the captured "
                    f"{tuple(static.shape)}; capture again for new shapes"
                )
            static.copy_(inputs[name])
        self._graph.replay()
        return {name: self._static[name] for name in self.output_names}

    def _bind_inputs(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"missing engine inputs {missing}; it takes {self.input_names}")
        feeds = {}
        for name in self.input_names:
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            tensor = inputs[name].to(self.device, dtype).contiguous()
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} is outside the profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
            feeds[name] = tensor
        return feeds

    def _bind_outputs(self) -> dict[str, torch.Tensor]:
        import torch

        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt
    import torch

    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.bfloat16: torch.bfloat16,
        trt.int32: torch.int32,
        trt.int64: torch.int64,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    return table[trt_dtype]
