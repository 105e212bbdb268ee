"""The generation pipeline on the tensorrt backend (the torch backend on CUDA: test_torch_cuda).

Skipped, with the reason, where TensorRT or CUDA is missing (``pip install 'textinv[gpu]'``).
References are diffusers' pipeline on the CPU, as in the unit tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
    reference_pipeline,
)
from textinv_export.exporter import ExportConfig, export_model
from textinv_export.manifest import ManifestError, Target, load_manifest
from textinv_export.specs import Component, Precision, Range, ShapeRanges
from textinv_export.tensorrt import tensorrt_missing
from textinv_export.tensorrt_engine import load_cudart
from textinv_server.backends.tensorrt_backend import TensorRTBackend
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler

MISSING = tensorrt_missing()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(MISSING is not None, reason=f"{MISSING}; pip install 'textinv[gpu]'"),
]
RANGES = ShapeRanges(batch=Range(1, 2, 4), resolution=Range(32, 32, 64))
GENERATED = (Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER)


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trt")
    config = ExportConfig(
        out, target=Target.TENSORRT, precision=Precision.FP16, ranges=RANGES, components=GENERATED
    )
    export_model(tiny_model, config, progress=lambda _: None)
    return out


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"<cat-toy>": torch.randn(2, tiny_model.text_width, generator=generator)}


@pytest.fixture(scope="module")
def reference(tiny_model_dir, concepts, tmp_path_factory):
    return reference_pipeline(tiny_model_dir, concepts, tmp_path_factory.mktemp("concepts"))


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a photo of <cat-toy>", "steps": 4, "seed": 8, "width": 48, "height": 32}
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize("scheduler", [Scheduler.DDIM, Scheduler.EULER_ANCESTRAL])
def test_tensorrt_matches_diffusers(scheduler, tiny_model, engines, concepts, reference) -> None:
    pipeline = GenerationPipeline(
        HostModel.of(tiny_model), TensorRTBackend(engines, tiny_model.model_hash)
    )
    req = request(scheduler=scheduler, num_images=2)
    ours = pixels(pipeline(req, concepts))
    theirs = reference_images(reference, req)
    assert max_pixel_difference(ours, theirs) <= 8  # fp16 engines
    assert abs(ours.astype(float) - theirs.astype(float)).mean() < 1.0


def test_tensorrt_batched_equals_unbatched(tiny_model, engines, concepts) -> None:
    pipeline = GenerationPipeline(
        HostModel.of(tiny_model), TensorRTBackend(engines, tiny_model.model_hash)
    )
    requests = [request(seed=1), request(seed=2, guidance_scale=3.0)]
    alone = [pixels(pipeline(req, concepts)) for req in requests]
    batched = pipeline.run_batch([pipeline.prepare(r, concepts) for r in requests])
    for one, result in zip(alone, batched, strict=True):
        assert max_pixel_difference(one, pixels(result)) <= 2  # type: ignore[arg-type]


def test_tensorrt_refuses_a_manifest_for_another_model(engines) -> None:
    with pytest.raises(ManifestError, match="not the expected model"):
        TensorRTBackend(engines, "f" * 64)


@pytest.mark.skipif(load_cudart() is None, reason="CUDA graphs of engines need cuda-python")
def test_the_unet_replays_a_cuda_graph_with_the_same_images(tiny_model, engines, concepts) -> None:
    host = HostModel.of(tiny_model)
    plain = GenerationPipeline(host, TensorRTBackend(engines, tiny_model.model_hash))
    graphed_backend = TensorRTBackend(engines, tiny_model.model_hash, cuda_graph=True)
    graphed = GenerationPipeline(host, graphed_backend)
    req = request(num_images=2)
    assert max_pixel_difference(pixels(plain(req, concepts)), pixels(graphed(req, concepts))) <= 1
    unet = graphed_backend.unet.engine
    assert unet.graph_failure is None, unet.graph_failure
    assert unet.captured_shapes is not None  # the last shapes' graph, replayed every step


def test_tensorrt_loads_from_its_engines_alone(tiny_model, engines, concepts, tmp_path) -> None:
    """The backend checks (and needs) only the engine files: the ONNX beside them can go."""
    folder = shutil.copytree(engines, tmp_path / "engines")
    manifest = load_manifest(folder)
    for entry in manifest.components.values():
        for file in (*entry.source_files, *entry.graph_files):
            (folder / file.path).unlink()
    pipeline = GenerationPipeline(
        HostModel.of(tiny_model), TensorRTBackend(folder, tiny_model.model_hash)
    )
    assert pixels(pipeline(request(), concepts)).std() > 5
