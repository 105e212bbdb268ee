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
    """``fp32`` → ``torch.float32``; a bad spelling raises, naming it and the choices. ``auto``
    has no dtype of its own: resolve it for a device first (``textinv.hardware``)."""
    precision = Precision.parse(precision)
    if precision is Precision.AUTO:
        raise ValueError("precision 'auto' has no dtype: resolve it for the device first")
    return _TORCH_DTYPES[precision]


def precision_of(dtype: torch.dtype) -> Precision:
    """``torch.bfloat16`` → ``Precision.BF16``; a dtype that is none of the three raises."""
    for precision, known in _TORCH_DTYPES.items():
        if known == dtype:
            return precision
    raise ValueError(f"{dtype} is not a floating-point precision this project runs in")
