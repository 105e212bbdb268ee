"""The one map from a :class:`~textinv_client.choices.Precision` to its torch dtype."""

from __future__ import annotations

import torch

from textinv_client.choices import Precision

_TORCH_DTYPES = {
    Precision.FP32: torch.float32,
    Precision.FP16: torch.float16,
    Precision.BF16: torch.bfloat16,
}


def torch_dtype(precision: Precision | str) -> torch.dtype:
    """``fp32`` → ``torch.float32``; a bad spelling raises, naming it and the choices."""
    return _TORCH_DTYPES[Precision.parse(precision)]
