"""ONNX export of the tiny model: graphs, manifest, parity against PyTorch, reuse, fp16."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from textinv_export.choices import SD_COMPONENTS
from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import MANIFEST_NAME, ManifestError, load_manifest
from textinv_export.modules import export_module
from textinv_export.optimize import optimize_graph
from textinv_export.parity import (
    Case,
    ParityError,
    ParityReport,
    Tolerance,
    check_parity,
    compare,
)
from textinv_export.specs import (
    Component,
    ComponentSpec,
    Precision,
    Range,
    ShapeRanges,
)

# The tiny model's side is 64 px; its graphs take multiples of 4 px (2 px per latent × 2 levels).
RANGES = ShapeRanges(batch=Range(1, 2, 3), resolution=Range(32, 64, 96))
# Dynamic batch 1 and 3 at two resolutions (and a non-square one), all inside RANGES.
CASES = [Case(1, 32, 32, seed=1), Case(3, 96, 64, seed=2)]
NORMALIZATIONS = ("LayerNormalization", "SkipLayerNormalization", "InstanceNormalization")


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "fp32"
    export_model(tiny_model, ExportConfig(out=out, ranges=RANGES), progress=lambda _: None)
    return out


def test_manifest_describes_every_component_and_verifies(tiny_model, exported: Path) -> None:
    manifest = load_manifest(exported, expected_model_hash=tiny_model.model_hash)
    assert set(manifest.components) == set(SD_COMPONENTS)
    assert manifest.opset == 17 and manifest.precision is Precision.FP32
    assert manifest.model.latent_scaling == tiny_model.latent_scaling
    assert manifest.versions.onnxruntime is not None and manifest.versions.torch is not None
    raw = json.loads((exported / MANIFEST_NAME).read_text())
    assert raw["components"]["unet"]["spec"]["profile"]["sample"]["max"] == [6, 4, 48, 48]


@pytest.mark.parametrize("component", list(SD_COMPONENTS))
def test_graph_io_matches_the_spec(exported: Path, component: Component) -> None:
    entry = load_manifest(exported).component(component)
    for path in (entry.source.path, entry.graph.path):
        graph = onnx.load(str(exported / path)).graph
        assert [i.name for i in graph.input] == entry.spec.input_names
        assert [o.name for o in graph.output] == entry.spec.output_names
        batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param == "batch"  # dynamic, not pinned by the trace


@pytest.mark.parametrize("component", list(SD_COMPONENTS))
def test_fp32_parity_at_batch_1_and_3_and_two_resolutions(
    tiny_model, exported: Path, component: Component
) -> None:
    entry = load_manifest(exported).component(component)
    for path in (entry.source.path, entry.graph.path):
        report = check_parity(
            export_module(component, tiny_model), entry.spec, exported / path, Precision.FP32, CASES
        )
        assert report.passed, report.lines()
        assert [c.case.batch for c in report.cases] == [1, 3]
        worst = max(o.relative_error for c in report.cases for o in c.outputs)
        assert worst <= 1e-4


def test_the_optimized_unet_has_its_attention_fused(exported: Path) -> None:
    """unet_attention's fusion runs under numpy 2, where onnxruntime's own raises: each block's
    self- and cross-attention is one operator in the optimized graph (which passes the parity
    test above), and the raw export TensorRT parses keeps its plain operators."""
    entry = load_manifest(exported).component(Component.UNET)
    fused, raw = (
        Counter(node.op_type for node in onnx.load(str(exported / path)).graph.node)
        for path in (entry.graph.path, entry.source.path)
    )
    assert fused["Attention"] == fused["MultiHeadAttention"] > 0
    assert raw["Attention"] == raw["MultiHeadAttention"] == 0
    assert fused["Softmax"] < raw["Softmax"]


class _Shifted(nn.Module):
    """The module plus a small offset: a graph that no longer matches it must fail parity."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.inner(*inputs) + 1e-2


def test_parity_fails_on_a_mismatch(tiny_model, exported: Path) -> None:
    entry = load_manifest(exported).component(Component.VAE_DECODER)
    module = _Shifted(export_module(Component.VAE_DECODER, tiny_model))
    report = check_parity(module, entry.spec, exported / entry.graph.path, Precision.FP32, CASES)
    assert not report.passed
    assert any(line.endswith("FAIL") for line in report.lines())
    with pytest.raises(ParityError, match="vae_decoder"):
        report.raise_if_failed()


@pytest.mark.parametrize("component", [Component.TEXT_ENCODER, Component.UNET])
def test_fp16_graph_keeps_fp32_io_and_passes_the_fp16_tolerance(
    tiny_model, exported: Path, tmp_path: Path, component: Component
) -> None:
    graph, report = fp16_graph_and_parity(tiny_model, exported, tmp_path, component)
    model = onnx.load(str(graph))
    dtypes = {onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in model.graph.initializer}
    assert np.dtype("float16") in dtypes  # weights were converted
    float_io = [*model.graph.input, *model.graph.output]
    assert all(
        t.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
        for t in float_io
    )
    # Normalizations stay fp32: their weights were not converted.
    weights = {t.name: t.data_type for t in model.graph.initializer}
    norms = [n for n in model.graph.node if n.op_type in NORMALIZATIONS]
    assert norms
    norm_weights = [weights[i] for n in norms for i in n.input if i in weights]
    assert norm_weights and set(norm_weights) == {onnx.TensorProto.FLOAT}
    assert report.passed, report.lines()
    assert report.tolerance.max_relative_error is not None  # not cosine alone


@pytest.mark.parametrize("component", [Component.VAE_DECODER, Component.VAE_ENCODER])
def test_fp16_vae_graphs_pass_the_fp16_tolerance(
    tiny_model, exported: Path, tmp_path: Path, component: Component
) -> None:
    _, report = fp16_graph_and_parity(tiny_model, exported, tmp_path, component)
    assert report.passed, report.lines()


def fp16_graph_and_parity(
    tiny_model, exported: Path, tmp_path: Path, component: Component
) -> tuple[Path, ParityReport]:
    """``component``'s raw export optimized to fp16, and its parity against PyTorch on CASES."""
    entry = load_manifest(exported).component(component)
    graph = optimize_graph(
        exported / entry.source.path, tmp_path / "fp16.onnx", component, Precision.FP16
    )
    module = export_module(component, tiny_model)
    return graph, check_parity(module, entry.spec, graph, Precision.FP16, CASES)


def test_fp16_tolerance_fails_a_scaled_output_that_cosine_passes() -> None:
    reference = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    scaled = compare("noise_pred", 1.05 * reference, reference)
    assert scaled.cosine == pytest.approx(1.0)  # same direction: cosine cannot tell
    assert scaled.passes(Tolerance(min_cosine=0.999))
    fp16 = Tolerance.for_precision(Precision.FP16)
    assert not scaled.passes(fp16)
    assert compare("noise_pred", 1.005 * reference, reference).passes(fp16)  # rounding-sized
    assert str(fp16) == "relative error ≤ 0.02 and cosine ≥ 0.999"


def test_rerun_reuses_and_force_rebuilds(tiny_model, tmp_path: Path) -> None:
    config = ExportConfig(out=tmp_path, ranges=RANGES, components=(Component.VAE_ENCODER,))
    first = export_model(tiny_model, config, progress=lambda _: None)
    graph = tmp_path / first.manifest.component(Component.VAE_ENCODER).graph.path
    written = graph.stat().st_mtime_ns
    again = export_model(tiny_model, config, progress=lambda _: None)
    assert again.reports[0].reused and graph.stat().st_mtime_ns == written
    other = ExportConfig(
        out=tmp_path, ranges=RANGES, components=(Component.VAE_ENCODER,), force=True
    )
    forced = export_model(tiny_model, other, progress=lambda _: None)
    assert not forced.reports[0].reused and graph.stat().st_mtime_ns != written


def test_interrupted_export_leaves_no_manifest(
    tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import textinv_export.exporter

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(textinv_export.exporter, "optimize_graph", interrupted)
    config = ExportConfig(out=tmp_path, ranges=RANGES, components=(Component.VAE_ENCODER,))
    with pytest.raises(KeyboardInterrupt):
        export_model(tiny_model, config, progress=lambda _: None)
    assert not (tmp_path / MANIFEST_NAME).exists()
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob(".*.export"))


@pytest.fixture
def copied(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def test_loader_names_an_altered_file(copied: Path) -> None:
    entry = load_manifest(copied).component(Component.UNET)
    path = copied / entry.graph.path
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"unet\.fp32\.opt\.onnx.*sha256.*altered"):
        load_manifest(copied)
    load_manifest(copied, verify_checksums=False)  # sizes still match


def test_loader_names_a_missing_file(copied: Path) -> None:
    (copied / load_manifest(copied).component(Component.VAE_DECODER).source.path).unlink()
    with pytest.raises(ManifestError, match=r"vae_decoder\.onnx.*missing"):
        load_manifest(copied)


def test_loader_checks_only_the_files_it_is_told_to(copied: Path) -> None:
    manifest = load_manifest(copied)
    for entry in manifest.components.values():  # a deployment that ships only optimized graphs
        for file in entry.source_files:
            (copied / file.path).unlink()
    with pytest.raises(ManifestError, match="missing"):
        load_manifest(copied)
    used = (Component.TEXT_ENCODER, Component.UNET)
    load_manifest(copied, components=used, files=lambda entry: entry.graph_files)
    with pytest.raises(ManifestError, match=r"text_encoder\.onnx.*missing"):
        load_manifest(copied, components=used, files=lambda entry: entry.source_files)
    graph = copied / manifest.component(Component.UNET).graph.path
    graph.write_bytes(graph.read_bytes()[:-1])  # a file it does read is still checked
    with pytest.raises(ManifestError, match="truncated"):
        load_manifest(copied, components=used, files=lambda entry: entry.graph_files)


def test_loader_refuses_another_models_manifest(copied: Path) -> None:
    with pytest.raises(ManifestError, match="not the expected model"):
        load_manifest(copied, expected_model_hash="0" * 64)


def test_loader_refuses_missing_and_malformed_manifests(copied: Path, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no export manifest"):
        load_manifest(tmp_path / "nowhere")
    (copied / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not a readable JSON manifest"):
        load_manifest(copied)


def test_manifest_spec_round_trips_from_json(exported: Path) -> None:
    raw = json.loads((exported / MANIFEST_NAME).read_text())
    spec = ComponentSpec.from_dict(raw["components"]["text_encoder"]["spec"])
    assert spec.input_names == ["inputs_embeds", "eos_positions", "clip_skip"]
    assert spec.inputs[1].dtype == "int64"
