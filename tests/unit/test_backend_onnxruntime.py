"""The onnxruntime backend (CPU) on the export stage's graphs, against diffusers' pipeline."""

from __future__ import annotations

import json
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
from textinv.errors import InvalidInputError
from textinv_export.manifest import MANIFEST_NAME, ManifestError
from textinv_server.backends import BackendName
from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend, Provider
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, Scheduler


@pytest.fixture(scope="module")
def engines(tiny_engines_dir: Path) -> Path:
    return tiny_engines_dir


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"<cat-toy>": torch.randn(2, tiny_model.text_width, generator=generator)}


@pytest.fixture(scope="module")
def pipeline(tiny_model, engines) -> GenerationPipeline:
    backend = OnnxRuntimeBackend(engines, tiny_model.model_hash, threads=1)
    return GenerationPipeline(HostModel.of(tiny_model), backend)


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": "a photo of <cat-toy> on the beach",
        "negative_prompt": "blurry",
        "steps": 3,
        "seed": 77,
        "width": 48,
        "height": 32,
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize("scheduler", [Scheduler.DDIM, Scheduler.EULER_ANCESTRAL])
def test_matches_diffusers_on_the_cpu(
    scheduler, pipeline, concepts, tiny_model_dir, tmp_path
) -> None:
    req = request(scheduler=scheduler, num_images=2)
    ours = pixels(pipeline(req, concepts))
    theirs = reference_images(reference_pipeline(tiny_model_dir, concepts, tmp_path), req)
    assert ours.std() > 5
    assert max_pixel_difference(ours, theirs) <= 4


def test_batched_equals_unbatched(pipeline, concepts) -> None:
    requests = [request(seed=1), request(seed=2, prompt="a <cat-toy> cat", guidance_scale=4.0)]
    alone = [pixels(pipeline(req, concepts)) for req in requests]
    jobs = [pipeline.prepare(req, concepts) for req in requests]
    batched = pipeline.run_batch(jobs)
    for one, result in zip(alone, batched, strict=True):
        assert max_pixel_difference(one, pixels(result)) <= 1  # type: ignore[arg-type]


def test_the_export_profile_limits_requests(pipeline, concepts) -> None:
    assert pipeline.backend.name is BackendName.ONNXRUNTIME
    for overrides, named in [
        ({"width": 128}, "width 128"),
        ({"height": 16}, "height 16"),
        ({"num_images": 5}, "5 images"),
    ]:
        with pytest.raises(InvalidInputError, match=named):
            pipeline.prepare(request(**overrides), concepts)


def test_a_manifest_for_another_model_is_refused(engines) -> None:
    with pytest.raises(ManifestError, match="not the expected model"):
        OnnxRuntimeBackend(engines, "0" * 64, threads=1)


def test_an_altered_graph_is_refused(tiny_model, engines, tmp_path) -> None:
    copy = shutil.copytree(engines, tmp_path / "engines")
    OnnxRuntimeBackend(copy, tiny_model.model_hash, threads=1)  # an intact copy loads
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    unet = copy / manifest["components"]["unet"]["graph"]["path"]
    data = bytearray(unet.read_bytes())
    data[-1] ^= 0xFF
    unet.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="altered"):
        OnnxRuntimeBackend(copy, tiny_model.model_hash, threads=1)


def test_an_unknown_or_missing_provider_is_named(tiny_model, engines) -> None:
    with pytest.raises(InvalidInputError, match="'metal'"):
        OnnxRuntimeBackend(engines, tiny_model.model_hash, provider="metal")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InvalidInputError, match="'cuda'.*not available"):
            OnnxRuntimeBackend(engines, tiny_model.model_hash, provider=Provider.CUDA)
