"""TensorRT engines of the tiny model on a GPU: build, cache reuse, parity, CUDA graph replay.

Skipped, with the reason, where TensorRT or CUDA is missing (``pip install 'textinv[gpu]'``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import Target, load_manifest
from textinv_export.modules import export_module
from textinv_export.parity import compare
from textinv_export.samples import sample_inputs
from textinv_export.specs import (
    Component,
    Precision,
    Range,
    ShapeRanges,
)
from textinv_export.tensorrt import TIMING_CACHE_NAME, TensorRTEngine, tensorrt_missing

MISSING = tensorrt_missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}; pip install 'textinv[gpu]'"),
]
RANGES = ShapeRanges(batch=Range(1, 2, 3), resolution=Range(32, 64, 96))


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt")
    config = ExportConfig(out=out, target=Target.TENSORRT, precision=Precision.FP16, ranges=RANGES)
    export_model(tiny_model, config, progress=lambda _: None)
    return out


def test_every_component_has_an_engine_and_a_timing_cache(engines: Path) -> None:
    manifest = load_manifest(engines)
    for entry in manifest.components.values():
        assert entry.engine is not None
        assert f"trt{entry.engine.tensorrt_version}" in entry.engine.file.path
    assert (engines / "engines" / TIMING_CACHE_NAME).stat().st_size > 0


def test_rebuild_reuses_engines_by_cache_key(tiny_model, engines: Path) -> None:
    before = load_manifest(engines).component(Component.UNET).engine
    config = ExportConfig(
        out=engines,
        target=Target.TENSORRT,
        precision=Precision.FP16,
        ranges=RANGES,
        components=(Component.UNET,),
    )
    again = export_model(tiny_model, config, progress=lambda _: None)
    assert again.manifest.component(Component.UNET).engine == before


@pytest.mark.parametrize("component", list(Component))
def test_engine_matches_pytorch(tiny_model, engines: Path, component: Component) -> None:
    entry = load_manifest(engines).component(component)
    engine = TensorRTEngine(engines / entry.engine.file.path)  # type: ignore[union-attr]
    module = export_module(component, tiny_model).cuda()
    for batch, side in ((1, 32), (3, 96)):
        inputs = sample_inputs(entry.spec, batch, side, side, seed=batch)
        with torch.no_grad():
            expected = module(*(t.cuda() for t in inputs.values()))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = engine.infer({k: v.cuda() for k, v in inputs.items()})
        torch.cuda.synchronize()
        for name, ref in zip(entry.spec.output_names, expected, strict=True):
            parity = compare(name, got[name].float().cpu().numpy(), ref.float().cpu().numpy())
            assert parity.cosine >= 0.999, (component, batch, side, parity)


def test_cuda_graph_replay_equals_a_plain_run(engines: Path) -> None:
    entry = load_manifest(engines).component(Component.UNET)
    engine = TensorRTEngine(engines / entry.engine.file.path)  # type: ignore[union-attr]
    first = {k: v.cuda() for k, v in sample_inputs(entry.spec, 2, seed=1).items()}
    second = {k: v.cuda() for k, v in sample_inputs(entry.spec, 2, seed=2).items()}
    engine.capture(first)
    replayed = engine.replay(second)["noise_pred"].clone()
    plain = engine.infer(second)["noise_pred"]
    torch.cuda.synchronize()
    assert torch.allclose(replayed, plain, atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="captured"):
        engine.replay({k: v.cuda() for k, v in sample_inputs(entry.spec, 3, seed=3).items()})
