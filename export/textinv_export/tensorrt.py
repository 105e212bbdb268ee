"""TensorRT engines from the exported ONNX graphs, and the runtime wrapper the server uses.

Written against the TensorRT 10 Python API (``tensorrt``), which needs an NVIDIA GPU with CUDA.
Nothing imports ``tensorrt`` at module level: without it ``require_tensorrt`` raises at once with
what is missing and how to install it, and the pure helpers (cache keys, file names, builder
flags, the timing-cache and CUDA-graph decisions) still work and are tested on CPU.

- ``build_engine``: ONNX parser → network, one optimization profile from the spec, the flag of
  the precision asked for only, a timing cache per TensorRT version and GPU. The engine's file
  name carries the TensorRT version and its cache key (model, raw graph and external weights);
  an engine whose key matches is reused.
- ``TensorRTEngine``: deserialize on its device, bind torch CUDA tensors by address, run with
  ``execute_async_v3`` on its stream; with ``cuda_graph=True``, capture a CUDA graph per input
  shapes, recapture when they change, and run without graphs if capture fails (as trtexec).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from textinv.errors import TextInvError
from textinv.fileio import atomic_write_bytes
from textinv_export.choices import Precision
from textinv_export.specs import ComponentSpec, ShapeProfile

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'textinv[gpu]' on a machine with an NVIDIA GPU and CUDA"
WORKSPACE_BYTES = 8 << 30  # the builder's scratch memory limit; tactics that need more are skipped
# Input name → shape, in the engine's input order: what a captured CUDA graph is valid for.
ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
GraphStep = Literal["plain", "capture", "replay"]


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


def graph_step(
    cuda_graph: bool, captured: ShapeKey | None, wanted: ShapeKey, failure: str | None
) -> GraphStep:
    """What ``infer`` does for inputs of shapes ``wanted``: a plain run, capture (then replay), or
    replay. One graph at a time: TensorRT's context holds one set of input shapes, and a graph is
    valid only for the shapes it was captured with, so any change of shapes recaptures."""
    if not cuda_graph or failure is not None:
        return "plain"
    return "replay" if captured == wanted else "capture"


def capture_failure(enqueued: bool, end_error: BaseException | None) -> str | None:
    """Why a capture cannot be replayed, or None. Like trtexec: ``execute_async_v3`` returns False
    while capturing when the engine holds operations a CUDA graph cannot, and ending a capture
    that such an operation invalidated raises."""
    if end_error is not None:
        return f"the capture was invalidated ({end_error})"
    if not enqueued:
        return "execute_async_v3 returned False while capturing"
    return None


@dataclass
class _Captured:
    key: ShapeKey
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # the buffers the graph reads: copy new inputs in
    outputs: dict[str, torch.Tensor]  # the buffers it writes: copied out for the caller


class TensorRTEngine:
    """One deserialized engine with its execution context, fed and read as torch CUDA tensors.

    >>> engine = TensorRTEngine(Path("out/unet.fp16.trt10.x.plan"))  # doctest: +SKIP
    >>> noise = engine.infer({"sample": s, "timestep": t, "encoder_hidden_states": h})["noise_pred"]
    """

    def __init__(self, path: Path, device: int = 0, *, cuda_graph: bool = False) -> None:
        require_tensorrt()
        import tensorrt as trt
        import torch

        self.device = torch.device("cuda", device)
        self.cuda_graph = cuda_graph
        self.logger = trt.Logger(trt.Logger.WARNING)
        # TensorRT deserializes onto, and creates contexts on, the current CUDA device.
        with torch.cuda.device(self.device):
            self.runtime = trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                raise EngineBuildError(f"{str(path)!r} is not an engine this TensorRT can load")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        if self.context is None:
            raise EngineBuildError(f"{str(path)!r}: TensorRT could not create a context")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.graph_failure: str | None = None  # why CUDA graphs were given up on this engine
        self._captured: _Captured | None = None  # the graph for the current input shapes

    @property
    def captured_shapes(self) -> ShapeKey | None:
        return None if self._captured is None else self._captured.key

    def infer(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run once; returns fresh output tensors on the device, the caller's to keep."""
        import torch

        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"missing engine inputs {missing}; it takes {self.input_names}")
        key = tuple((name, tuple(inputs[name].shape)) for name in self.input_names)
        with torch.cuda.device(self.device):
            step = graph_step(self.cuda_graph, self.captured_shapes, key, self.graph_failure)
            if step == "capture":
                self._captured = self._capture(inputs, key)
                step = "plain" if self._captured is None else "replay"
            return self._replay(inputs) if step == "replay" else self._run(inputs)

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        feeds = self._bind_inputs(self._feeds(inputs))
        outputs = self._bind_outputs()
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)  # inputs were written on the caller's stream
        self._execute()
        current.wait_stream(self.stream)
        for tensor in (*feeds.values(), *outputs.values()):
            tensor.record_stream(self.stream)
        return outputs

    def _capture(self, inputs: Mapping[str, torch.Tensor], key: ShapeKey) -> _Captured | None:
        """A graph for ``key``'s shapes over buffers of its own, or None if capture failed."""
        import torch

        self._captured = None  # the context is about to take other shapes: the old graph is void
        static = self._bind_inputs({n: t.clone() for n, t in self._feeds(inputs).items()})
        outputs = self._bind_outputs()
        # 1. One plain run first, after the copies above: TensorRT does its shape-dependent
        # setup (and any allocation) outside the capture.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self._execute()
        self.stream.synchronize()
        # 2. Capture on the engine's stream (thread-local mode, as trtexec: other threads' CUDA
        # calls do not void it); always end it, even when TensorRT refuses.
        graph, enqueued, end_error = torch.cuda.CUDAGraph(), False, None
        with torch.cuda.stream(self.stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                enqueued = bool(self.context.execute_async_v3(self.stream.cuda_stream))
            finally:
                try:
                    graph.capture_end()
                except RuntimeError as error:
                    end_error = error
        self.graph_failure = capture_failure(enqueued, end_error)
        if self.graph_failure is not None:
            log.warning("CUDA graph capture failed: %s; running without", self.graph_failure)
            return None
        return _Captured(key, graph, static, outputs)

    def _replay(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        captured = self._captured
        assert captured is not None
        for name in self.input_names:  # on the caller's stream, like the replay itself
            captured.inputs[name].copy_(inputs[name])
        captured.graph.replay()
        # Copies: the next replay overwrites the graph's buffers.
        return {name: captured.outputs[name].clone() for name in self.output_names}

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execute_async_v3 failed; see its log")

    def _feeds(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: inputs[name]
            .to(self.device, torch_dtype(self.engine.get_tensor_dtype(name)))
            .contiguous()
            for name in self.input_names
        }

    def _bind_inputs(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in feeds.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} is outside the profile")
            self.context.set_tensor_address(name, tensor.data_ptr())
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

    names = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "bool")  # same in both
    return {getattr(trt, name): getattr(torch, name) for name in names}[trt_dtype]
