"""The onnxruntime backend's batch split on the CPU: the halves of a batch run at once on half
the threads each, and every image's numbers stay those of one whole run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.unit.generation_reference import max_pixel_difference, pixels
from textinv_server.backends.onnxruntime_backend import CpuThreads, OnnxRuntimeBackend
from textinv_server.host_model import HostModel
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest


@pytest.fixture(scope="module")
def split(tiny_model, tiny_engines_dir: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(tiny_engines_dir, tiny_model.model_hash, threads=2)


@pytest.fixture(scope="module")
def whole(tiny_model, tiny_engines_dir: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(tiny_engines_dir, tiny_model.model_hash, threads=2, split_batch=False)


def unet_inputs(tiny_model, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=generator)  # 32 px latents of the tiny VAE
    timestep = torch.full((batch,), 500.0)
    hidden = torch.randn(batch, 77, tiny_model.text_width, generator=generator)
    return sample, timestep, hidden


def test_the_plan_splits_two_ways_and_never_adds_threads() -> None:
    assert CpuThreads.plan(1) == CpuThreads(1, 1)
    assert CpuThreads.plan(2) == CpuThreads(2, 1)
    assert CpuThreads.plan(3) == CpuThreads(2, 1)
    assert CpuThreads.plan(16) == CpuThreads(2, 8)
    assert CpuThreads.plan(16, split=False) == CpuThreads(1, 16)
    default = CpuThreads.plan(0)  # the physical cores
    assert default.workers * default.threads_per_run >= 1


def test_which_graphs_split(split, whole) -> None:
    assert (split.unet.workers, split.text_encoder.workers, split.vae_decoder.workers) == (2, 2, 1)
    assert (whole.unet.workers, whole.text_encoder.workers) == (1, 1)
    assert split.unet.session.get_session_options().intra_op_num_threads == 1
    assert split.vae_decoder.session.get_session_options().intra_op_num_threads == 2
    assert split.unet._parts(2) == [(0, 1), (1, 2)]
    assert split.unet._parts(5) == [(0, 2), (2, 5)]
    assert split.unet._parts(1) == [(0, 1)]


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_a_split_unet_call_equals_one_whole_call(tiny_model, split, whole, batch) -> None:
    inputs = unet_inputs(tiny_model, batch)
    ours, reference = split.predict_noise(*inputs), whole.predict_noise(*inputs)
    assert ours.shape == reference.shape == (batch, 4, 8, 8)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_each_half_answers_to_its_own_rows(tiny_model, split) -> None:
    """The control: the halves are not copies of one another, and swapping the inputs' rows
    swaps the output's, so each part wrote the rows it was given."""
    sample, timestep, hidden = unet_inputs(tiny_model, 2, seed=3)
    out = split.predict_noise(sample, timestep, hidden)
    assert (out[0] - out[1]).abs().max() > 1e-2
    swapped = split.predict_noise(sample.flip(0), timestep, hidden.flip(0))
    torch.testing.assert_close(swapped, out.flip(0), rtol=0, atol=1e-6)


def test_the_text_encoder_splits_too(tiny_model, split, whole) -> None:
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(2, 77, tiny_model.text_width, generator=generator)
    eos, clip_skip = torch.tensor([5, 9]), torch.tensor([0, 1])
    torch.testing.assert_close(
        split.encode_text(embeds, eos, clip_skip),
        whole.encode_text(embeds, eos, clip_skip),
        rtol=0,
        atol=1e-6,
    )


def test_images_from_a_split_backend_are_the_whole_backend_images(tiny_model, split, whole) -> None:
    request = GenerationRequest(
        prompt="a red cube", negative_prompt="blurry", steps=3, seed=4, width=32, height=32
    )
    host = HostModel.of(tiny_model)
    ours = pixels(GenerationPipeline(host, split)(request, {}))
    reference = pixels(GenerationPipeline(host, whole)(request, {}))
    assert ours.std() > 5
    assert max_pixel_difference(ours, reference) == 0
