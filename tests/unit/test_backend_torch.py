"""The torch backend's speed options on the CPU: each keeps the images (CUDA graphs: tests/gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from tests.unit.generation_reference import max_pixel_difference, pixels
from textinv.errors import InvalidInputError
from textinv.model import BaseModel, load_base_model
from textinv_client.choices import Precision
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.backends.torch_backend import TorchBackend, use_sdpa
from textinv_server.pipeline import GenerationPipeline, StepClock, load_generation_pipeline
from textinv_server.requests import GenerationRequest, Scheduler

REQUEST = GenerationRequest(
    "a photo of a red toy", steps=2, seed=7, width=32, height=32, scheduler=Scheduler.DDIM
)


def fresh(folder: Path) -> BaseModel:
    """A model of our own: the options cast and re-layout the modules in place."""
    return load_base_model(folder)


def generate(folder: Path, options: TorchOptions) -> GenerationPipeline:
    return load_generation_pipeline(
        fresh(folder), BackendName.TORCH, BackendOptions(torch_options=options)
    )


@pytest.fixture(scope="module")
def baseline(tiny_model_dir: Path):
    return pixels(generate(tiny_model_dir, TorchOptions())(REQUEST))


def test_channels_last_gives_the_same_image(tiny_model_dir, baseline) -> None:
    pipeline = generate(tiny_model_dir, TorchOptions(channels_last=True))
    conv = pipeline.backend.unet.conv_in.weight  # type: ignore[attr-defined]
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert max_pixel_difference(pixels(pipeline(REQUEST)), baseline) <= 1


def test_bf16_weights_are_cast_and_stay_close(tiny_model_dir, baseline) -> None:
    pipeline = generate(tiny_model_dir, TorchOptions(weights=Precision.BF16))
    backend = pipeline.backend
    assert isinstance(backend, TorchBackend)
    assert backend.dtype == torch.bfloat16
    assert backend.vae.dtype == torch.bfloat16
    assert pipeline.host.token_embedding.dtype == torch.float32  # the host table stays fp32
    result = pixels(pipeline(REQUEST))
    # bf16 keeps 8 bits of mantissa: the random tiny model's image moves by a few levels.
    assert max_pixel_difference(result, baseline) <= 24


def test_compiled_unet_gives_the_same_image(tiny_model_dir, baseline) -> None:
    # The "eager" compile backend runs dynamo's tracing and guards with no C++ toolchain.
    options = TorchOptions(compile=True, compile_backend="eager")
    pipeline = generate(tiny_model_dir, options)
    assert max_pixel_difference(pixels(pipeline(REQUEST)), baseline) == 0


def test_compile_makes_one_static_graph_per_shape(tiny_model_dir) -> None:
    """dynamic=False: each new input shape compiles a graph of its own, where dynamo's default
    would compile one dynamic-shape graph at the second shape and reuse it for the third; a
    shape seen before compiles nothing."""
    from torch._dynamo.utils import counters

    options = TorchOptions(compile=True, compile_backend="eager")
    backend = TorchBackend(fresh(tiny_model_dir), options=options)
    width = backend.unet.config.cross_attention_dim
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    try:
        for rows in (1, 2, 3, 1):
            sample, hidden = torch.randn(rows, 4, 8, 8), torch.randn(rows, 77, width)
            backend.predict_noise(sample, torch.full((rows,), 10.0), hidden)
            graphs.append(counters["stats"]["unique_graphs"])
    finally:
        torch._dynamo.reset()
    assert graphs == [1, 2, 3, 3]


def test_cuda_graphs_are_refused_off_cuda_naming_the_device(tiny_model) -> None:
    with pytest.raises(InvalidInputError, match="CUDA device; it is on cpu"):
        TorchBackend(tiny_model, options=TorchOptions(cuda_graph=True))


def test_attention_runs_through_sdpa(tiny_model_dir) -> None:
    model = fresh(tiny_model_dir)
    assert use_sdpa(model.unet, model.vae) == ("AttnProcessor2_0",)  # diffusers' default
    model.unet.set_attn_processor(AttnProcessor())
    backend = TorchBackend(model)
    # What it found (the UNet's plain processor, the VAE's SDPA one), then replaced.
    assert backend.attention == ("AttnProcessor", "AttnProcessor2_0")
    assert use_sdpa(model.unet) == ("AttnProcessor2_0",)


def test_unknown_weight_dtype_names_the_value() -> None:
    with pytest.raises(InvalidInputError, match="'fp8'"):
        TorchOptions(weights="fp8")  # type: ignore[arg-type]


def test_step_clock_on_the_cpu_is_the_host_clock() -> None:
    clock = StepClock(torch.device("cpu"))
    measured = []
    for _ in range(3):
        clock.start()
        torch.ones(64, 64).matmul(torch.ones(64, 64))
        measured.append(clock.stop())
    assert clock.step_ms() == measured
    assert all(ms > 0 for ms in measured)
