"""The torch backend on CUDA, against diffusers, and its fast path: bf16, channels-last,
cudnn.benchmark, torch.compile, CUDA graphs (on the model's device), events.

Needs CUDA only (no TensorRT); skipped, with the reason, elsewhere. ``scripts/gpu_check.sh``
runs these. The reference is diffusers' pipeline on the CPU in fp32, as in the unit tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.generation_reference import (
    max_pixel_difference,
    pixels,
    reference_images,
    reference_pipeline,
)
from textinv.model import load_base_model
from textinv_client.choices import Precision
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.backends.torch_backend import CudaGraphUNet, TorchBackend
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline
from textinv_server.requests import GenerationRequest, Scheduler

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]


def request(scheduler: Scheduler = Scheduler.DDIM, images: int = 1) -> GenerationRequest:
    return GenerationRequest(
        "a photo of <cat-toy> on the beach", negative_prompt="blurry", steps=4, seed=21,
        width=32, height=32, scheduler=scheduler, num_images=images,
    )  # fmt: skip


@pytest.fixture(scope="module")
def concepts(tiny_model) -> dict[str, torch.Tensor]:
    return {
        "<cat-toy>": torch.randn(
            2, tiny_model.text_width, generator=torch.Generator().manual_seed(3)
        )
    }


@pytest.fixture(scope="module")
def reference(tiny_model_dir, concepts, tmp_path_factory):
    return reference_pipeline(tiny_model_dir, concepts, tmp_path_factory.mktemp("concepts"))


def on_cuda(folder: Path, options: TorchOptions) -> GenerationPipeline:
    model = load_base_model(folder, device="cuda")
    return load_generation_pipeline(
        model, BackendName.TORCH, BackendOptions(device="cuda", torch_options=options)
    )


def test_torch_backend_on_cuda_matches_diffusers(tiny_model_dir, concepts, reference) -> None:
    # A model of its own, loaded onto the GPU: the session's tiny model stays on the CPU.
    model = load_base_model(tiny_model_dir, device="cuda")
    pipeline = GenerationPipeline(HostModel.of(model), TorchBackend(model, channels_last=True))
    req = request(Scheduler.DPM_SOLVER_PP_2M)
    ours = pixels(pipeline(req, concepts))
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 2
    assert torch.backends.cudnn.benchmark  # set by a backend on CUDA


@pytest.mark.parametrize("scheduler", [Scheduler.DDIM, Scheduler.EULER_ANCESTRAL])
def test_cuda_graphs_and_channels_last_match_diffusers(
    tiny_model_dir, concepts, reference, scheduler
) -> None:
    pipeline = on_cuda(tiny_model_dir, TorchOptions(channels_last=True, cuda_graph=True))
    req = request(scheduler)
    ours = pixels(pipeline(req, concepts))
    assert max_pixel_difference(ours, reference_images(reference, req)) <= 2
    backend = pipeline.backend
    assert isinstance(backend, TorchBackend) and backend.attention == ("AttnProcessor2_0",)
    graphs = backend._unet_forward
    assert isinstance(graphs, CudaGraphUNet) and len(graphs.graphs) == 1  # one shape, captured once
    assert graphs._stream is not None and graphs._stream.device == backend.device


def test_replay_equals_eager_for_two_shapes(tiny_model_dir, concepts) -> None:
    eager = on_cuda(tiny_model_dir, TorchOptions())
    graphed = on_cuda(tiny_model_dir, TorchOptions(cuda_graph=True))
    for images in (1, 2):  # two batch shapes: two graphs in one pool
        req = request(images=images)
        a, b = pixels(eager(req, concepts)), pixels(graphed(req, concepts))
        assert max_pixel_difference(a, b) <= 1
    graphs = graphed.backend._unet_forward  # type: ignore[attr-defined]
    assert len(graphs.graphs) == 2


def test_compiled_unet_matches_eager(tiny_model_dir, concepts) -> None:
    eager = pixels(on_cuda(tiny_model_dir, TorchOptions())(request(), concepts))
    compiled = pixels(on_cuda(tiny_model_dir, TorchOptions(compile=True))(request(), concepts))
    assert max_pixel_difference(eager, compiled) <= 2


@pytest.mark.parametrize("weights", [Precision.BF16, Precision.FP16])
def test_half_weights_stay_close_to_diffusers(tiny_model_dir, concepts, reference, weights) -> None:
    pipeline = on_cuda(tiny_model_dir, TorchOptions(weights=weights, channels_last=True))
    assert pipeline.backend.dtype == weights.torch_dtype  # type: ignore[attr-defined]
    ours = pixels(pipeline(request(), concepts))
    assert max_pixel_difference(ours, reference_images(reference, request())) <= 24


def test_step_times_come_from_cuda_events(tiny_model_dir, concepts) -> None:
    pipeline = on_cuda(tiny_model_dir, TorchOptions(cuda_graph=True))
    result = pipeline(request(), concepts)
    assert len(result.timings.unet_step_ms) == 4
    assert all(ms > 0 for ms in result.timings.unet_step_ms)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_cuda_graphs_capture_on_the_models_device(tiny_model_dir, concepts) -> None:
    """The model on cuda:1 while cuda:0 is current: capture and replay follow the model."""
    model = load_base_model(tiny_model_dir, device="cuda:1")
    options = BackendOptions(device="cuda:1", torch_options=TorchOptions(cuda_graph=True))
    graphed = load_generation_pipeline(model, BackendName.TORCH, options)
    eager = load_generation_pipeline(
        load_base_model(tiny_model_dir, device="cuda:1"),
        BackendName.TORCH,
        BackendOptions(device="cuda:1"),
    )
    with torch.cuda.device(0):
        a, b = pixels(graphed(request(), concepts)), pixels(eager(request(), concepts))
    assert max_pixel_difference(a, b) <= 1
    graphs = graphed.backend._unet_forward  # type: ignore[attr-defined]
    assert graphs._stream.device == torch.device("cuda", 1)
