"""Running a TensorRT engine from torch: ``TensorRTEngine``, which the tensorrt backend uses.

Written against the TensorRT 10 Python API, which needs an NVIDIA GPU with CUDA; nothing here
imports ``tensorrt`` at module level, and the decisions (``graph_step``, ``capture_failure``) are
pure and tested on CPU. An engine is deserialized on its device, binds torch CUDA tensors by
address and runs with ``execute_async_v3`` on its own stream, ordered after the caller's.

With ``cuda_graph=True`` it captures a CUDA graph per input shapes, recaptures when they change,
and runs without graphs once TensorRT refuses capture, as trtexec's ``--useCudaGraph`` does. The
capture is the CUDA runtime's own (``cuda-python``, as TensorRT's demo/Diffusion captures), not
``torch.cuda.CUDAGraph``: it holds only TensorRT's enqueue, no torch allocation, and a refused
capture is ended and its error cleared (``cudaGetLastError``) without touching torch's caching
allocator, which a failing ``CUDAGraph.capture_end`` leaves believing a capture is under way.
Without ``cuda-python`` the engine says so once and runs without graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from textinv_export.tensorrt import EngineBuildError, require_tensorrt

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Input name → shape, in the engine's input order: what a captured CUDA graph is valid for.
ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]
GraphStep = Literal["plain", "capture", "replay"]
ADDRESS_ALIGNMENT = 256  # bytes: TensorRT 10 refuses tensor addresses that are not aligned so
NO_CUDA_PYTHON = "cuda-python is not installed (pip install cuda-python for CUDA graphs)"


def graph_step(
    cuda_graph: bool, captured: ShapeKey | None, wanted: ShapeKey, failure: str | None
) -> GraphStep:
    """What ``infer`` does for inputs of shapes ``wanted``: a plain run, capture (then replay), or
    replay. One graph at a time: TensorRT's context holds one set of input shapes, and a graph is
    valid only for the shapes it was captured with, so any change of shapes recaptures."""
    if not cuda_graph or failure is not None:
        return "plain"
    return "replay" if captured == wanted else "capture"


def capture_failure(enqueued: bool, end_error: str | None) -> str | None:
    """Why a capture cannot be replayed, or None. Like trtexec: ``execute_async_v3`` returns False
    while capturing when the engine holds operations a CUDA graph cannot, and ending a capture
    that such an operation invalidated fails."""
    if end_error is not None:
        return f"the capture was invalidated ({end_error})"
    if not enqueued:
        return "execute_async_v3 returned False while capturing"
    return None


def load_cudart() -> Any | None:
    """cuda-python's runtime bindings (``cuda.bindings.runtime``, or ``cuda.cudart`` before
    12.6), or None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart as runtime  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    return runtime


class CudaGraph:
    """One captured and instantiated CUDA graph (``cudaGraphExec_t``), launched on a stream."""

    def __init__(self, cudart: Any, executable: Any) -> None:
        self._cudart, self._executable = cudart, executable

    @classmethod
    def capture(
        cls, cudart: Any, stream: int, enqueue: Callable[[], bool]
    ) -> tuple[CudaGraph | None, str | None]:
        """Capture what ``enqueue`` puts on ``stream`` (thread-local mode: other threads' CUDA
        calls do not void it); the graph, or None and why not."""
        ok = cudart.cudaError_t.cudaSuccess
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        (error,) = cudart.cudaStreamBeginCapture(stream, mode)
        if error != ok:
            return None, f"cudaStreamBeginCapture failed: {error}"
        enqueued, raised = False, None
        try:
            enqueued = bool(enqueue())
        except Exception as exception:  # the capture is ended below either way
            raised = f"execute_async_v3 raised {type(exception).__name__}: {exception}"
        error, graph = cudart.cudaStreamEndCapture(stream)
        failure = raised or capture_failure(enqueued, None if error == ok else str(error))
        if failure is None:
            error, executable = cudart.cudaGraphInstantiate(graph, 0)
            failure = None if error == ok else f"cudaGraphInstantiate failed: {error}"
        if int(graph):
            cudart.cudaGraphDestroy(graph)  # the executable keeps what it needs
        if failure is not None:
            cudart.cudaGetLastError()  # clear the error a refused capture leaves, as trtexec
            return None, failure
        return cls(cudart, executable), None

    def launch(self, stream: int) -> None:
        (error,) = self._cudart.cudaGraphLaunch(self._executable, stream)
        if error != self._cudart.cudaError_t.cudaSuccess:
            raise EngineBuildError(f"cudaGraphLaunch failed: {error}")

    def __del__(self) -> None:
        self._cudart.cudaGraphExecDestroy(self._executable)


@dataclass
class _Captured:
    key: ShapeKey
    graph: CudaGraph
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
        self._cudart = load_cudart() if cuda_graph else None
        # Why CUDA graphs were given up on this engine (then every run is plain), or None.
        self.graph_failure = NO_CUDA_PYTHON if cuda_graph and self._cudart is None else None
        if self.graph_failure is not None:
            log.warning("%s: %s; running without CUDA graphs", Path(path).name, self.graph_failure)
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
        # 2. Capture TensorRT's enqueue alone on the engine's stream.
        stream = self.stream.cuda_stream
        graph, self.graph_failure = CudaGraph.capture(
            self._cudart, stream, lambda: self.context.execute_async_v3(stream)
        )
        if graph is None:
            log.warning("CUDA graph capture failed: %s; running without", self.graph_failure)
            return None
        return _Captured(key, graph, static, outputs)

    def _replay(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        captured = self._captured
        assert captured is not None
        current = torch.cuda.current_stream(self.device)
        for name in self.input_names:  # on the caller's stream, where the inputs were written
            captured.inputs[name].copy_(inputs[name])
        self.stream.wait_stream(current)
        captured.graph.launch(self.stream.cuda_stream)
        current.wait_stream(self.stream)
        # Copies, on the caller's stream: the next replay overwrites the graph's buffers.
        return {name: captured.outputs[name].clone() for name in self.output_names}

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineBuildError("TensorRT execute_async_v3 failed; see its log")

    def _feeds(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each input on the device, in the engine's dtype, contiguous and aligned as TensorRT
        needs (a view into another tensor may start anywhere: then it is copied)."""
        feeds = {}
        for name in self.input_names:
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            tensor = inputs[name].to(self.device, dtype).contiguous()
            feeds[name] = tensor.clone() if tensor.data_ptr() % ADDRESS_ALIGNMENT else tensor
        return feeds

    def _bind_inputs(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for name, tensor in feeds.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} is outside the profile")
            self._set_address(name, tensor)
        return feeds

    def _bind_outputs(self) -> dict[str, torch.Tensor]:
        import torch

        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch_dtype(self.engine.get_tensor_dtype(name))
            outputs[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self._set_address(name, outputs[name])
        return outputs

    def _set_address(self, name: str, tensor: torch.Tensor) -> None:
        # False (an unaligned or refused address) would leave the previous buffer bound.
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise EngineBuildError(f"TensorRT refused the address of {name!r}")


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    import tensorrt as trt
    import torch

    names = ("float32", "float16", "bfloat16", "int32", "int64", "int8", "bool")  # same in both
    return {getattr(trt, name): getattr(torch, name) for name in names}[trt_dtype]
