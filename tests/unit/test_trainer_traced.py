"""The trainer's traced UNet and text encoder (``textinv.trainer.traced``) against eager runs."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from tests.unit.test_trainer import config_for, make_images
from textinv.conv_kernels import im2col_convolutions, use_im2col_convolutions
from textinv.trainer import prepare
from textinv.trainer.traced import Traced
from textinv.unet import unet_module


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


def unet_inputs(model, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    width = model.unet.config.cross_attention_dim
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    hidden = torch.randn(batch, 77, width, generator=g).requires_grad_(True)
    return sample, timesteps, hidden


def forward_backward(call, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The prediction and the gradient of a fixed loss with respect to the hidden states."""
    hidden = inputs[2].detach().requires_grad_(True)
    prediction = call(inputs[0], inputs[1], hidden, *inputs[3:])
    (prediction * torch.linspace(-1, 1, prediction.numel()).view_as(prediction)).sum().backward()
    assert hidden.grad is not None
    return prediction.detach(), hidden.grad


@pytest.mark.parametrize("im2col", [False, True])
def test_a_traced_unet_equals_eager_bit_for_bit(tiny_model, im2col: bool) -> None:  # type: ignore[no-untyped-def]
    eager = unet_module(tiny_model.unet, is_sdxl=False)
    traced = Traced(eager, "UNet", within=lambda: im2col_convolutions(im2col))
    for batch, seed in ((1, 0), (1, 1), (3, 2)):
        inputs = unet_inputs(tiny_model, batch, seed)
        with im2col_convolutions(im2col):
            expected = forward_backward(eager, inputs)
        got = forward_backward(traced, inputs)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    # It was the trace that ran: one per batch size, nothing fell back to eager.
    assert len(traced.traces) == 2 and not traced.failed
    # Control: the compared gradient depends on the inputs (a change of seed moves it).
    other = forward_backward(traced, unet_inputs(tiny_model, 1, 5))
    assert (other[1] - expected[1][:1]).abs().max() > 1e-6


@pytest.fixture(scope="module")
def sdxl_model(tiny_sdxl_model_dir: Path):  # -> BaseModel
    from textinv.model import load_base_model

    return load_base_model(tiny_sdxl_model_dir)


def test_sdxl_added_conditions_trace_too(sdxl_model) -> None:  # type: ignore[no-untyped-def]
    unet = sdxl_model.unet
    eager = unet_module(unet, is_sdxl=True)
    traced = Traced(eager, "UNet")
    sample, timesteps, hidden = unet_inputs(sdxl_model, 2)
    pooled = torch.randn(2, sdxl_model.text_encoder_2.config.projection_dim)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [80, 64, 8, 0, 64, 64]])
    inputs = (sample, timesteps, hidden, pooled, time_ids)
    expected, got = forward_backward(eager, inputs), forward_backward(traced, inputs)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert len(traced.traces) == 1
    moved = forward_backward(traced, (sample, timesteps, hidden, pooled, time_ids.flip(0)))
    assert (moved[0] - expected[0]).abs().max() > 1e-6  # the time ids reach the prediction


def test_the_trace_shares_the_weights_it_recorded(tiny_model) -> None:  # type: ignore[no-untyped-def]
    layer = torch.nn.Linear(8, 8).requires_grad_(False)
    traced = Traced(layer, "layer")
    x = torch.randn(2, 8)
    before = traced(x)
    with torch.no_grad():
        layer.weight.mul_(2)  # in place: a copy in the trace would not see it
    assert torch.allclose(traced(x), layer(x)) and not torch.allclose(traced(x), before)


def test_no_trace_under_autocast_off_cpu_or_when_disabled() -> None:
    layer = torch.nn.Linear(8, 8).requires_grad_(False)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = Traced(layer, "layer")
        assert under_autocast(x).dtype == torch.bfloat16 and not under_autocast.traces
    disabled = Traced(layer, "layer", enabled=False)
    assert torch.equal(disabled(x), layer(x)) and not disabled.traces


def test_a_module_that_cannot_be_traced_runs_eagerly(caplog: pytest.LogCaptureFixture) -> None:
    class ReturnsText(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> object:
            return {"text": "not a tensor", "sum": x.sum()}

    traced = Traced(ReturnsText(), "odd module")
    with caplog.at_level(logging.WARNING, logger="textinv.trainer"):
        out = traced(torch.ones(3))
        traced(torch.ones(3))
    assert out["text"] == "not a tensor" and float(out["sum"]) == 3.0
    assert traced.failed and not traced.traces
    warnings = [r for r in caplog.records if "runs eagerly" in r.getMessage()]
    assert len(warnings) == 1 and "odd module" in warnings[0].getMessage()


@pytest.mark.parametrize("im2col", [False, True])
def test_traced_training_equals_eager_training(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path, monkeypatch, im2col: bool
) -> None:
    # The same convolution kernel in both runs (a trace alone lets im2col pay at this width):
    # what differs is only whether the calls are replayed from a trace.
    monkeypatch.setattr("textinv.trainer.run.use_im2col_convolutions", lambda *_, **__: im2col)
    vectors = {}
    for trace in (True, False):
        out = tmp_path / f"trace-{trace}"
        config = config_for(image_dir, out, tiny_model_dir, steps=3, eval_every=1, trace=trace)
        trainer = prepare(config, tiny_model)
        start = trainer.vectors.detach().clone()
        vectors[trace] = trainer.train().vectors
        assert bool(trainer.unet.traces) is trace and bool(trainer.text.encode.traces) is trace
    assert torch.equal(vectors[True], vectors[False])
    assert (vectors[True] - start).abs().max() > 1e-6  # control: the steps moved the vectors


def test_a_run_resumes_with_the_trace_switched(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    out = tmp_path / "out"
    first = config_for(image_dir, out, tiny_model_dir, steps=2, checkpoint_every=1, trace=False)
    prepare(first, tiny_model).train()
    resumed = dataclasses.replace(first, steps=3, resume=True, trace=True)
    trainer = prepare(resumed, tiny_model)
    trainer.train()
    assert trainer.state.step == 3 and trainer.unet.traces


def test_im2col_pays_at_any_width_only_when_traced() -> None:
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert use_im2col_convolutions(cpu, torch.float32, 64, traced=True)
        assert not use_im2col_convolutions(cpu, torch.float32, 64)
        assert not use_im2col_convolutions(cpu, torch.bfloat16, 64, traced=True)
    finally:
        torch.set_num_threads(threads)
