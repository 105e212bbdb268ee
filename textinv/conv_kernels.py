"""A faster fp32 convolution kernel for the trainer's UNet on few CPU threads.

PyTorch sends an fp32 3×3 convolution on CPU to oneDNN (``mkldnn_convolution``). For the frozen
UNet's forward and its input-gradient backward at batch 1 on one or two threads, the im2col + MKL
GEMM kernel (``thnn_conv2d``, PyTorch's own fallback, which it already picks for 1×1 convolutions on
one thread) is about 15% faster on the machine we measured (SD 1.5 shapes, 256 px, an AMD EPYC with
AVX-512; ``textinv bench invert``), and it stays deterministic. It computes the same convolution in
fp32; only the summation order differs (gradients agree to ~1e-7 relative).

``im2col_convolutions()`` routes ``conv2d`` calls to that kernel inside a ``with`` block. It is a
``TorchFunctionMode``, whose stack is thread-local: nothing outside the block, and no other thread
(a server generating while a job trains), is affected. Anything it does not cover (a non-CPU or
non-fp32 tensor, autocast, groups, dilation, string padding, unbatched input) goes to ``conv2d``
unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

# Measured faster up to this many threads; with more, oneDNN's threading should win (PyTorch's
# own heuristic prefers oneDNN for 1×1 convolutions as soon as there are two threads).
MAX_THREADS = 2
# Narrower UNets lose: every torch call passes through the mode's Python dispatch, which costs
# more than the kernel saves on small convolutions (the 64-channel embedded model at 64 px:
# oneDNN 4-7% faster per training step, Intel Xeon, 1 and 2 threads; SD 1.5 is 320-1280 wide).
MIN_CHANNELS = 256


class Im2colConv2d(TorchFunctionMode):
    """Send fp32 CPU ``conv2d`` to ``thnn_conv2d`` (im2col + GEMM); everything else as is."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            routed = _im2col_conv2d(*args, **kwargs)
            if routed is not None:
                return routed
        return func(*args, **kwargs)


def _im2col_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor | None:
    """``thnn_conv2d`` for the cases it covers, else None."""
    if (
        groups != 1
        or isinstance(padding, str)
        or any(d != 1 for d in _pair(dilation))
        or input.dim() != 4
        or input.device.type != "cpu"
        or input.dtype != torch.float32
        or weight.dtype != torch.float32
        or (bias is not None and bias.dtype != torch.float32)
        or torch.is_autocast_enabled("cpu")
    ):
        return None
    kernel = list(weight.shape[2:])
    return torch._C._nn.thnn_conv2d(  # type: ignore[attr-defined,no-any-return]
        input, weight, kernel, bias, list(_pair(stride)), list(_pair(padding))
    )


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def use_im2col_convolutions(
    device: torch.device, dtype: torch.dtype, channels: int, *, traced: bool = False
) -> bool:
    """Whether ``im2col_convolutions`` pays here: fp32 weights on CPU, at most two threads, and a
    UNet whose widest block has at least ``MIN_CHANNELS`` channels, unless the UNet runs as a
    trace recorded in the block (``textinv.trainer.traced``), whose replay skips the mode's
    Python: then the kernel wins at any width (the embedded model: 19.3 against 20.3 ms a
    forward and backward, Intel Xeon, 2 threads)."""
    return (
        device.type == "cpu"
        and dtype == torch.float32
        and torch.get_num_threads() <= MAX_THREADS
        and (traced or channels >= MIN_CHANNELS)
    )


def im2col_convolutions(enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A ``with`` block in which fp32 CPU ``conv2d`` runs as im2col + GEMM (this thread only)."""
    return Im2colConv2d() if enabled else contextlib.nullcontext()
