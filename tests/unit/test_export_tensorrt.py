"""TensorRT helpers that need no GPU: cache keys, file names, builder flags, the timing-cache and
CUDA-graph decisions, the missing-TensorRT error. The fakes below stand in for TensorRT objects
only where the logic under test is a pure decision over their documented return values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from textinv_export.manifest import ComponentEntry, EngineEntry, FileEntry
from textinv_export.specs import (
    Component,
    ModelDims,
    Precision,
    Range,
    ShapeRanges,
    component_specs,
)
from textinv_export.tensorrt import (
    GpuIdentity,
    TensorRTUnavailableError,
    attach_timing_cache,
    engine_cache_key,
    engine_filename,
    precision_flags,
    require_tensorrt,
    serialized_timing_cache,
    tensorrt_missing,
    timing_cache_filename,
)
from textinv_export.tensorrt_engine import CudaGraph, capture_failure, graph_step

DIMS = ModelDims(768, 768, 4, 4, 4, 3, 4, 8)
H200 = GpuIdentity("NVIDIA H200", "9.0")
MODEL = "m" * 64


def _spec(batch_max: int = 4):
    ranges = ShapeRanges(Range(1, 1, batch_max), Range(512, 512, 768))
    return component_specs(DIMS, ranges)[Component.UNET]


def _key(sources=("a" * 64,), version="10.8.0", gpu=H200, batch_max=4, precision=None, model=MODEL):
    profile = _spec(batch_max).profile
    return engine_cache_key(model, sources, version, gpu, profile, precision or Precision.FP16)


def test_cache_key_changes_with_each_input() -> None:
    variants = [
        _key(model="n" * 64),
        _key(sources=("b" * 64,)),
        _key(sources=("a" * 64, "d" * 64)),
        _key(version="10.9.0"),
        _key(gpu=GpuIdentity("NVIDIA A100", "8.0")),
        _key(gpu=GpuIdentity("NVIDIA H200", "9.1")),
        _key(batch_max=8),
        _key(precision=Precision.FP32),
    ]
    assert len({_key(), *variants}) == 1 + len(variants)
    assert _key() == _key()


def _entry(data_sha256: str | None) -> ComponentEntry:
    data = None if data_sha256 is None else FileEntry("onnx/unet.onnx.data", data_sha256, 3 << 30)
    return ComponentEntry(
        spec=_spec(),
        source=FileEntry("onnx/unet.onnx", "a" * 64, 1 << 20),
        graph=FileEntry("onnx/unet.fp16.opt.onnx", "e" * 64, 1 << 20),
        source_data=data,
    )


def test_the_exporters_cache_key_covers_the_external_weights() -> None:
    # Over 2 GB the weights are in unet.onnx.data: the .onnx alone is the same for another model
    # of the same architecture, so a key over it alone would reuse a stale engine.
    def key(entry: ComponentEntry) -> str:
        return engine_cache_key(
            MODEL, entry.source_sha256s, "10.8.0", H200, entry.spec.profile, Precision.FP16
        )

    weights = _entry("b" * 64)
    assert weights.source_sha256s == ("a" * 64, "b" * 64)
    assert key(weights) != key(_entry("c" * 64))
    assert key(weights) != key(_entry(None))
    assert key(weights) == key(replace(weights, graph=replace(weights.graph, sha256="f" * 64)))


def test_engine_filename_carries_version_precision_and_key() -> None:
    name = engine_filename("unet", Precision.FP16, "10.8.0.43", "0123456789abcdef")
    assert name == "unet.fp16.trt10.8.0.43.0123456789ab.plan"


def test_timing_cache_filename_names_tensorrt_and_the_gpu() -> None:
    assert (
        timing_cache_filename("10.8.0.43", H200)
        == "timing_cache.trt10.8.0.43.nvidia-h200.sm90.cache"
    )
    names = {
        timing_cache_filename("10.8.0.43", H200),
        timing_cache_filename("10.9.0.34", H200),
        timing_cache_filename("10.8.0.43", GpuIdentity("NVIDIA A100-SXM4-80GB", "8.0")),
        timing_cache_filename("10.8.0.43", GpuIdentity("NVIDIA H200", "9.1")),
    }
    assert len(names) == 4


def test_only_the_precision_asked_for_is_set() -> None:
    assert precision_flags(Precision.FP16) == {"FP16": True}  # never BF16 beside it
    assert precision_flags(Precision.FP32) == {"TF32": False}  # TF32 is on by default
    with pytest.raises(ValueError, match="bf16"):
        precision_flags(Precision.BF16)


def test_an_older_manifests_bf16_field_is_ignored() -> None:
    engine = {
        "file": {"path": "engines/unet.plan", "sha256": "a" * 64, "size": 1},
        "cache_key": "k" * 64,
        "tensorrt_version": "10.8.0.43",
        "gpu_name": "NVIDIA H200",
        "compute_capability": "9.0",
        "precision": "fp16",
        "bf16": True,  # written before the BF16 flag was dropped
    }
    entry = ComponentEntry.from_dict({**_entry(None).to_dict(), "engine": engine})
    assert entry.engine == EngineEntry.from_dict(engine)
    assert entry.engine is not None and entry.engine.precision is Precision.FP16
    assert "bf16" not in entry.engine.to_dict()


class FakeTimingCache:
    """``trt.ITimingCache``: its header names the GPU and TensorRT version that wrote it."""

    def __init__(self, header: bytes, timings: bytes) -> None:
        self.header, self.timings = header, timings

    def serialize(self) -> bytes:
        return self.header + b"|" + self.timings


class FakeBuilderConfig:
    """``trt.IBuilderConfig``'s timing-cache methods as TensorRT 10 documents them:
    ``create_timing_cache(b"")`` makes a new cache and returns None (nullptr) for bytes it cannot
    read; ``set_timing_cache(cache, ignore_mismatch=False)`` returns False for a cache whose
    header is another device's or version's, and attaches nothing; ``get_timing_cache()`` is None
    while no cache is attached."""

    def __init__(self, here: bytes = b"H200/10.8", refuse_all: bool = False) -> None:
        self.here, self.refuse_all = here, refuse_all
        self.attached: FakeTimingCache | None = None

    def create_timing_cache(self, blob: bytes) -> FakeTimingCache | None:
        if not blob:
            return FakeTimingCache(self.here, b"")
        header, bar, timings = bytes(blob).partition(b"|")
        return FakeTimingCache(header, timings) if bar else None

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        if self.refuse_all or (cache.header != self.here and not ignore_mismatch):
            return False
        self.attached = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        return self.attached


def test_a_saved_timing_cache_of_this_gpu_is_taken() -> None:
    config = FakeBuilderConfig()
    assert attach_timing_cache(config, b"H200/10.8|tactics") == "saved"
    assert serialized_timing_cache(config) == b"H200/10.8|tactics"


@pytest.mark.parametrize("saved", [b"A100/10.8|tactics", b"H200/10.7|tactics", b"garbage", b""])
def test_another_gpus_or_an_unreadable_cache_gives_way_to_a_new_one(saved: bytes) -> None:
    config = FakeBuilderConfig()
    assert attach_timing_cache(config, saved) == "new"
    assert serialized_timing_cache(config) == b"H200/10.8|"  # this machine's, and empty


def test_a_build_without_any_timing_cache_saves_none_instead_of_raising() -> None:
    config = FakeBuilderConfig(refuse_all=True)
    assert attach_timing_cache(config, b"H200/10.8|tactics") == "none"
    assert config.get_timing_cache() is None
    assert serialized_timing_cache(config) is None


def test_cuda_graphs_capture_per_shape_and_fall_back_for_good() -> None:
    two = (("sample", (2, 4, 8, 8)), ("timestep", (2,)))
    three = (("sample", (3, 4, 8, 8)), ("timestep", (3,)))
    assert graph_step(False, None, two, None) == "plain"
    assert graph_step(True, None, two, None) == "capture"
    assert graph_step(True, two, two, None) == "replay"
    assert graph_step(True, two, three, None) == "capture"  # a new shape recaptures
    assert graph_step(True, None, three, "capture failed") == "plain"


def test_a_refused_or_invalidated_capture_is_a_failure() -> None:
    assert capture_failure(True, None) is None
    refused = capture_failure(False, None)
    assert refused is not None and "returned False" in refused
    invalidated = capture_failure(True, "cudaErrorStreamCaptureInvalidated")
    assert invalidated is not None and "Invalidated" in invalidated


class FakeCudart:
    """cuda-python's runtime bindings as their documentation has them, for capture's decisions:
    every call returns a tuple led by a ``cudaError_t``; ending a capture returns the graph even
    when it failed (NULL then); instantiating gives an executable. It records the calls."""

    class cudaError_t:  # cuda-python's names
        cudaSuccess = "cudaSuccess"
        cudaErrorStreamCaptureInvalidated = "cudaErrorStreamCaptureInvalidated"

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = "thread-local"

    def __init__(self, end_error: str = "cudaSuccess") -> None:
        self.end_error = end_error
        self.calls: list[tuple[object, ...]] = []

    def cudaStreamBeginCapture(self, stream, mode):
        self.calls.append(("begin", stream, mode))
        return ("cudaSuccess",)

    def cudaStreamEndCapture(self, stream):
        self.calls.append(("end", stream))
        return self.end_error, (7 if self.end_error == "cudaSuccess" else 0)

    def cudaGraphInstantiate(self, graph, flags):
        self.calls.append(("instantiate", graph))
        return "cudaSuccess", 9

    def cudaGraphDestroy(self, graph):
        self.calls.append(("destroy", graph))

    def cudaGetLastError(self):
        self.calls.append(("clear",))
        return ("cudaSuccess",)

    def cudaGraphExecDestroy(self, executable):
        self.calls.append(("destroy-exec", executable))


def test_a_capture_is_always_ended_and_a_refused_one_cleared() -> None:
    ok = FakeCudart()
    graph, failure = CudaGraph.capture(ok, 5, lambda: True)
    assert graph is not None and failure is None
    assert [c[0] for c in ok.calls] == ["begin", "end", "instantiate", "destroy"]
    assert ok.calls[0] == ("begin", 5, "thread-local")  # other threads' calls do not void it

    refused = FakeCudart()
    graph, failure = CudaGraph.capture(refused, 5, lambda: False)  # TensorRT said no
    assert graph is None and failure is not None and "returned False" in failure
    assert [c[0] for c in refused.calls] == ["begin", "end", "destroy", "clear"]

    invalidated = FakeCudart(end_error="cudaErrorStreamCaptureInvalidated")
    graph, failure = CudaGraph.capture(invalidated, 5, lambda: True)
    assert graph is None and failure is not None and "Invalidated" in failure
    assert [c[0] for c in invalidated.calls] == ["begin", "end", "clear"]  # NULL: no destroy

    def raising() -> bool:
        raise RuntimeError("enqueue failed")

    raised = FakeCudart()
    graph, failure = CudaGraph.capture(raised, 5, raising)
    assert graph is None and failure is not None and "enqueue failed" in failure
    assert ("end", 5) in raised.calls  # never left capturing


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and CUDA are present here")
def test_require_tensorrt_says_what_is_missing_and_how_to_install() -> None:
    with pytest.raises(TensorRTUnavailableError) as error:
        require_tensorrt()
    assert str(tensorrt_missing()) in str(error.value)
    assert "pip install 'textinv[gpu]'" in str(error.value)
