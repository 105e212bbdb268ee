"""The im2col convolution mode: same convolution (to fp32 roundoff), deterministic, thread-local."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from textinv.conv_kernels import im2col_convolutions, use_im2col_convolutions


@pytest.mark.parametrize(
    "options",
    [
        {"stride": 1, "padding": 1},
        {"stride": 2, "padding": 1},
        {"stride": (1, 2), "padding": (0, 1)},
        {"stride": 1, "padding": 0, "bias": False},
    ],
)
def test_matches_conv2d_forward_and_input_gradient(options: dict[str, Any]) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 9, 11, generator=generator, requires_grad=True)
    weight = torch.randn(5, 6, 3, 3, generator=generator)
    bias = None if options.get("bias") is False else torch.randn(5, generator=generator)
    stride, padding = options["stride"], options["padding"]
    expected = F.conv2d(x, weight, bias, stride, padding)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    with im2col_convolutions():
        got = F.conv2d(x, weight, bias, stride, padding)
    assert got.grad_fn is not None and "Slow" in type(got.grad_fn).__name__
    (grad,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)


def test_uncovered_cases_go_to_conv2d_unchanged() -> None:
    x = torch.randn(1, 4, 8, 8)
    grouped = torch.randn(4, 2, 3, 3)
    dilated = torch.randn(3, 4, 3, 3)
    with im2col_convolutions():
        a = F.conv2d(x, grouped, None, 1, 1, 1, 2)
        b = F.conv2d(x, dilated, None, 1, 2, 2)
        c = F.conv2d(x, dilated, None, 1, "same")
        d = F.conv2d(x.bfloat16(), dilated.bfloat16(), None, 1, 1)
    assert torch.equal(a, F.conv2d(x, grouped, None, 1, 1, 1, 2))
    assert torch.equal(b, F.conv2d(x, dilated, None, 1, 2, 2))
    assert torch.equal(c, F.conv2d(x, dilated, None, 1, "same"))
    assert torch.equal(d, F.conv2d(x.bfloat16(), dilated.bfloat16(), None, 1, 1))


def test_disabled_is_a_no_op() -> None:
    x, weight = torch.randn(1, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with im2col_convolutions(enabled=False):
        assert torch.equal(F.conv2d(x, weight, None, 1, 1), F.conv2d(x, weight, None, 1, 1))


def test_only_the_calling_thread_is_affected() -> None:
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3)
    seen: list[str] = []
    with im2col_convolutions():
        worker = threading.Thread(
            target=lambda: seen.append(type(F.conv2d(x, weight, None, 1, 1).grad_fn).__name__)
        )
        worker.start()
        worker.join()
        inside = type(F.conv2d(x, weight, None, 1, 1).grad_fn).__name__
    assert "Slow" in inside and "Slow" not in seen[0]


def test_unet_gradient_matches_and_is_deterministic(tiny_model) -> None:  # type: ignore[no-untyped-def]
    unet = tiny_model.unet
    generator = torch.Generator().manual_seed(0)
    channels, side = unet.config.in_channels, 8
    latents = torch.randn(2, channels, side, side, generator=generator)
    width = unet.config.cross_attention_dim
    hidden = torch.randn(2, 77, width, generator=generator, requires_grad=True)
    timesteps = torch.tensor([10, 700])

    def gradient(fast: bool) -> torch.Tensor:
        with im2col_convolutions(fast):
            prediction = unet(latents, timesteps, encoder_hidden_states=hidden).sample
        (grad,) = torch.autograd.grad(prediction.square().mean(), hidden)
        return grad

    reference = gradient(False)
    fast = gradient(True)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6)
    assert torch.equal(fast, gradient(True))
    assert all(p.grad is None for p in unet.parameters())


def test_used_only_for_fp32_on_cpu_and_a_wide_unet() -> None:
    cpu, sd = torch.device("cpu"), 1280  # SD's widest block
    assert not use_im2col_convolutions(cpu, torch.bfloat16, sd)
    assert not use_im2col_convolutions(torch.device("cuda"), torch.float32, sd)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert use_im2col_convolutions(cpu, torch.float32, sd)
        assert not use_im2col_convolutions(cpu, torch.float32, 64)  # the embedded model's width
    finally:
        torch.set_num_threads(threads)
