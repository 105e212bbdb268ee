"""SDXL's export: two text-encoder graphs (the second with its pooled projection), a UNet graph
that takes ``text_embeds`` and ``time_ids``, the VAE; parity with PyTorch per graph, and pixels
against diffusers' ``StableDiffusionXLPipeline`` on the onnxruntime backend."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.unit.generation_reference import max_pixel_difference, pixels, reference_images
from tests.unit.sdxl_reference import registered, sdxl_concepts, sdxl_reference_pipeline
from tests.unit.test_export_onnx import CASES
from textinv.errors import InvalidInputError
from textinv.testing_sdxl import TINY_SDXL_WIDTHS
from textinv_export.choices import Component
from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import load_manifest
from textinv_export.modules import export_module
from textinv_export.parity import check_parity
from textinv_export.specs import Precision, Range, ShapeRanges
from textinv_server.backends import BackendName, BackendOptions
from textinv_server.pipeline.generation import load_generation_pipeline
from textinv_server.requests import GenerationRequest, Scheduler

RANGES = ShapeRanges(batch=Range(1, 2, 3), resolution=Range(32, 64, 96))
PROMPT = "a photo of <cat-toy> in <dog-style> style on the beach"


@pytest.fixture(scope="module")
def sdxl_model(tiny_sdxl_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_sdxl_model_dir)


@pytest.fixture(scope="module")
def exported(sdxl_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdxl-export")
    export_model(sdxl_model, ExportConfig(out=out, ranges=RANGES), progress=lambda _: None)
    return out


def test_the_manifest_has_both_text_encoders(sdxl_model, exported: Path) -> None:
    manifest = load_manifest(exported, expected_model_hash=sdxl_model.model_hash)
    assert list(manifest.components) == list(Component)  # text_encoder_2 among them
    assert (manifest.model.text_width, manifest.model.text_width_2) == TINY_SDXL_WIDTHS
    unet = manifest.component(Component.UNET).spec
    assert unet.input_names[-2:] == ["text_embeds", "time_ids"]
    second = manifest.component(Component.TEXT_ENCODER_2).spec
    assert second.output_names == ["hidden_states", "text_embeds"]
    for component, entry in manifest.components.items():
        graph = onnx.load(str(exported / entry.source.path)).graph
        assert [i.name for i in graph.input] == entry.spec.input_names, component
        assert [o.name for o in graph.output] == entry.spec.output_names, component


@pytest.mark.parametrize("component", list(Component))
def test_each_graph_matches_pytorch(sdxl_model, exported: Path, component: Component) -> None:
    entry = load_manifest(exported).component(component)
    for path in (entry.source.path, entry.graph.path):
        module = export_module(component, sdxl_model)
        report = check_parity(module, entry.spec, exported / path, Precision.FP32, CASES)
        assert report.passed, report.lines()


@pytest.mark.parametrize("negative", ["blurry", ""])
def test_pixels_match_stable_diffusion_xl_on_onnxruntime(
    tiny_sdxl_model_dir: Path, exported: Path, negative: str
) -> None:
    options = BackendOptions(engines=exported)
    pipeline = load_generation_pipeline(tiny_sdxl_model_dir, BackendName.ONNXRUNTIME, options)
    assert pipeline.host.is_sdxl and pipeline.host.text_widths == TINY_SDXL_WIDTHS
    reference = sdxl_reference_pipeline(tiny_sdxl_model_dir, sdxl_concepts(7))
    request = GenerationRequest(
        PROMPT,
        negative_prompt=negative,
        steps=4,
        seed=3,
        width=32,
        height=40,
        num_images=2,
        scheduler=Scheduler.EULER,
    )
    result = pipeline(request, registered(sdxl_concepts(7)))
    ours = pixels(result)
    assert max_pixel_difference(ours, reference_images(reference, result.request)) <= 2
    # The control: other vectors for the concepts move the pixels by far more (measured 20).
    other = pixels(pipeline(request, registered(sdxl_concepts(8))))
    assert max_pixel_difference(ours, other) > 10


def test_an_sd_model_has_no_second_text_encoder(tiny_model, tmp_path: Path) -> None:
    config = ExportConfig(tmp_path / "out", components=(Component.TEXT_ENCODER_2,))
    with pytest.raises(InvalidInputError, match="--components text_encoder_2: .* has no such part"):
        export_model(tiny_model, config)
