"""TensorRT engines of the tiny model on a GPU: build, cache reuse, partial re-export, parity,
CUDA graph replay and recapture, the device an engine runs on.

Skipped, with the reason, where TensorRT or CUDA is missing (``pip install 'textinv[gpu]'``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from textinv_export.choices import SD_COMPONENTS
from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import ComponentEntry, Target, load_manifest
from textinv_export.modules import export_module
from textinv_export.parity import Tolerance, compare
from textinv_export.samples import sample_inputs
from textinv_export.specs import (
    Component,
    Precision,
    Range,
    ShapeRanges,
)
from textinv_export.tensorrt import GpuIdentity, tensorrt_missing, timing_cache_filename
from textinv_export.tensorrt_engine import TensorRTEngine, load_cudart

MISSING = tensorrt_missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}; pip install 'textinv[gpu]'"),
]
RANGES = ShapeRanges(batch=Range(1, 2, 3), resolution=Range(32, 64, 96))
FP16 = Tolerance.for_precision(Precision.FP16)  # the bound the fp16 ONNX graphs meet on CPU


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt")
    config = ExportConfig(out=out, target=Target.TENSORRT, precision=Precision.FP16, ranges=RANGES)
    export_model(tiny_model, config, progress=lambda _: None)
    return out


def _engine_path(engines: Path, entry: ComponentEntry) -> Path:
    assert entry.engine is not None
    return engines / entry.engine.file.path


def _cuda_inputs(entry: ComponentEntry, batch: int, side: int | None = None, seed: int = 0):
    inputs = sample_inputs(entry.spec, batch, side, side, seed=seed)
    return {name: tensor.cuda() for name, tensor in inputs.items()}


def test_every_component_has_an_engine_and_a_timing_cache(engines: Path) -> None:
    manifest = load_manifest(engines)
    assert manifest.target is Target.TENSORRT
    for entry in manifest.components.values():
        assert entry.engine is not None and entry.engine.precision is Precision.FP16
        assert f"trt{entry.engine.tensorrt_version}" in entry.engine.file.path
    version = manifest.component(Component.UNET).engine.tensorrt_version  # type: ignore[union-attr]
    cache = engines / "engines" / timing_cache_filename(version, GpuIdentity.current())
    assert cache.stat().st_size > 0


def test_unet_rebuild_reuses_its_engine_and_keeps_the_others(tiny_model, engines: Path) -> None:
    before = load_manifest(engines)
    config = ExportConfig(
        out=engines,
        target=Target.TENSORRT,
        precision=Precision.FP16,
        ranges=RANGES,
        components=(Component.UNET,),
    )
    again = export_model(tiny_model, config, progress=lambda _: None)
    assert again.reports[0].reused
    assert again.manifest.components == before.components  # all four, the UNet's engine the same
    assert load_manifest(engines).target is Target.TENSORRT


@pytest.mark.parametrize("component", list(SD_COMPONENTS))
def test_engine_matches_pytorch(tiny_model, engines: Path, component: Component) -> None:
    entry = load_manifest(engines).component(component)
    engine = TensorRTEngine(_engine_path(engines, entry))
    # A copy on the GPU: the session's tiny model stays on the CPU for the tests after this one.
    module = copy.deepcopy(export_module(component, tiny_model)).cuda()
    for batch, side in ((1, 32), (3, 96)):
        inputs = _cuda_inputs(entry, batch, side, seed=batch)
        with torch.no_grad():
            expected = module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = engine.infer(inputs)
        torch.cuda.synchronize()
        for name, ref in zip(entry.spec.output_names, expected, strict=True):
            parity = compare(name, got[name].float().cpu().numpy(), ref.float().cpu().numpy())
            assert parity.passes(FP16), (component, batch, side, parity, str(FP16))
    assert all(p.device.type == "cpu" for p in tiny_model.unet.parameters())


NO_CUDA_PYTHON = load_cudart() is None


@pytest.mark.skipif(NO_CUDA_PYTHON, reason="CUDA graphs of engines need cuda-python")
def test_cuda_graph_replays_equal_plain_runs_and_new_shapes_recapture(engines: Path) -> None:
    entry = load_manifest(engines).component(Component.UNET)
    graphed = TensorRTEngine(_engine_path(engines, entry), cuda_graph=True)
    plain = TensorRTEngine(_engine_path(engines, entry))
    first = graphed.infer(_cuda_inputs(entry, 2, seed=1))["noise_pred"]
    kept = first.clone()
    # Same shapes (a replay), a new batch and size (a recapture), then the first shapes again.
    for batch, side, seed in ((2, None, 2), (3, 96, 3), (2, None, 4)):
        inputs = _cuda_inputs(entry, batch, side, seed)
        got = graphed.infer(inputs)["noise_pred"]
        want = plain.infer(inputs)["noise_pred"]
        torch.cuda.synchronize()
        assert graphed.graph_failure is None
        shapes = tuple((name, tuple(inputs[name].shape)) for name in graphed.input_names)
        assert graphed.captured_shapes == shapes
        assert torch.allclose(got, want, atol=1e-3, rtol=1e-3), (batch, side)
    assert torch.equal(first, kept)  # what infer returned is the caller's: replays leave it


def _two_alike_gpus() -> bool:
    if torch.cuda.device_count() < 2:
        return False
    return GpuIdentity.current(0) == GpuIdentity.current(1)


@pytest.mark.skipif(not _two_alike_gpus(), reason="needs two GPUs of the same model")
def test_an_engine_runs_on_the_device_it_was_given(engines: Path) -> None:
    entry = load_manifest(engines).component(Component.UNET)
    with torch.cuda.device(0):
        engine = TensorRTEngine(_engine_path(engines, entry), device=1)
        out = engine.infer(_cuda_inputs(entry, 2, seed=1))["noise_pred"]
        torch.cuda.synchronize(1)
        assert out.device == torch.device("cuda", 1)
        assert torch.cuda.current_device() == 0
