"""The onnxruntime backend on its GPU providers (CUDA, TensorRT), against its CPU provider.

Each test needs torch with CUDA and onnxruntime-gpu with that provider; skipped, with the reason,
elsewhere. The graphs are the session's tiny export (fp32), copied where a provider writes a cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnxruntime
import pytest
import torch

from tests.unit.generation_reference import max_pixel_difference, pixels
from textinv_server.backends.onnxruntime_backend import OnnxRuntimeBackend, Provider
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest

AVAILABLE = onnxruntime.get_available_providers()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]


def needs(provider: str):  # -> a pytest mark
    return pytest.mark.skipif(
        provider not in AVAILABLE, reason=f"onnxruntime has no {provider} (pip onnxruntime-gpu)"
    )


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return {"<cat-toy>": torch.randn(2, tiny_model.text_width, generator=generator)}


def request(**overrides) -> GenerationRequest:
    values = {"prompt": "a photo of <cat-toy>", "steps": 3, "seed": 4, "width": 48, "height": 32}
    return GenerationRequest(**{**values, **overrides})


def on(provider: Provider, tiny_model, folder: Path) -> GenerationPipeline:
    backend = OnnxRuntimeBackend(folder, tiny_model.model_hash, provider=provider)
    return GenerationPipeline(HostModel.of(tiny_model), backend)


@needs("CUDAExecutionProvider")
def test_cuda_provider_keeps_tensors_on_the_gpu(tiny_model, tiny_engines_dir, concepts) -> None:
    gpu = on(Provider.CUDA, tiny_model, tiny_engines_dir)
    backend = gpu.backend
    assert backend.device == torch.device("cuda", 0)
    for graph in (backend.text_encoder, backend.unet, backend.vae_decoder):  # type: ignore[attr-defined]
        assert graph.session.get_providers()[0] == "CUDAExecutionProvider"
    noise = backend.predict_noise(
        torch.randn(2, 4, 16, 24, device="cuda"),
        torch.full((2,), 500.0, device="cuda"),
        torch.randn(2, 77, tiny_model.text_width, device="cuda"),
    )
    assert noise.device == backend.device and noise.shape == (2, 4, 16, 24)
    cpu = on(Provider.CPU, tiny_model, tiny_engines_dir)
    req = request(num_images=2)
    ours, theirs = pixels(gpu(req, concepts)), pixels(cpu(req, concepts))
    assert max_pixel_difference(ours, theirs) <= 4  # cuDNN's algorithms, TF32 where allowed
    assert abs(ours.astype(float) - theirs.astype(float)).mean() < 1.0


@needs("TensorrtExecutionProvider")
def test_tensorrt_provider_matches_the_cpu(
    tiny_model, tiny_engines_dir, concepts, tmp_path
) -> None:
    folder = shutil.copytree(tiny_engines_dir, tmp_path / "engines")  # it writes its cache there
    gpu = on(Provider.TENSORRT, tiny_model, folder)
    cpu = on(Provider.CPU, tiny_model, folder)
    for req in (request(), request(width=64, height=64, num_images=2)):  # two shapes, one profile
        ours, theirs = pixels(gpu(req, concepts)), pixels(cpu(req, concepts))
        assert max_pixel_difference(ours, theirs) <= 8
        assert abs(ours.astype(float) - theirs.astype(float)).mean() < 1.0
    assert list((folder / "ort_trt_cache").glob("*/*.engine"))  # per graph, beside the export
