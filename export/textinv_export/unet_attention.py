"""The UNet's attention fused into onnxruntime's ``Attention`` / ``MultiHeadAttention`` operators,
through the transformer optimizer's own classes with one fix for numpy 2.

onnxruntime 1.32's ``FusionAttentionUnet.get_num_heads`` reads the head count of a PyTorch 2
export with ``int()`` of a one-element 1-D array, which numpy ≥ 2.3 refuses ("only 0-dimensional
arrays can be converted to Python scalars"), so ``optimize_model`` with the attention fusion on
raises for every UNet. ``UnetModel`` is the optimizer's ``UnetOnnxModel`` with its attention
fusion built from ``_FusionAttentionUnet``, which reads the head count as a numpy-2 scalar and
otherwise is onnxruntime's. Packed QKV and KV stay off: their fused layouts are CUDA-only.

On the CPU this is worth about 5% of the tiny UNet's step at 64 px (one self-attention over 1024
tokens per block, measured on an Intel Xeon with 2 threads); the fused operators have CPU and CUDA
kernels both, and TensorRT never sees this graph (it parses the raw export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.transformers.fusion_attention_unet import FusionAttentionUnet
from onnxruntime.transformers.fusion_options import FusionOptions
from onnxruntime.transformers.onnx_model_unet import UnetOnnxModel


class _FusionAttentionUnet(FusionAttentionUnet):  # type: ignore[misc]
    """onnxruntime's UNet attention fusion, reading a PyTorch 2 graph's head count as numpy 2
    allows: the ``Concat`` that builds Q's reshape target holds it as a 1-element array."""

    def get_num_heads(self, reshape_q: Any, is_torch2: bool = False) -> int:
        if not is_torch2:
            return int(super().get_num_heads(reshape_q, is_torch2))
        target = self.model.get_parent(reshape_q, 1)  # Concat([0, 0, heads, head_size])
        if target is None or target.op_type != "Concat" or len(target.input) != 4:
            return 0
        value = self.model.get_constant_value(target.input[2])
        if not isinstance(value, np.ndarray) or value.size != 1:
            return 0
        return max(int(value.reshape(-1)[0]), 0)


class UnetModel(UnetOnnxModel):  # type: ignore[misc]
    """The optimizer's UNet model with ``_FusionAttentionUnet`` for self- and cross-attention."""

    def fuse_multi_head_attention(self, options: FusionOptions | None = None) -> None:
        for cross in (False, True):
            fusion = _FusionAttentionUnet(
                self,
                self.hidden_size,
                self.num_heads,
                is_cross_attention=cross,
                enable_packed_qkv=False,
                enable_packed_kv=False,
            )
            fusion.apply()


def optimize_unet(source: Path, options: FusionOptions) -> UnetModel:
    """``source`` (the raw UNet export, external weights included) fused as ``optimize_model``
    would at ``opt_level`` 0, with the attention fusion that runs under numpy 2."""
    optimizer = UnetModel(onnx.load(str(source)), 0, 0)  # heads and width: read from the graph
    optimizer.optimize(options)
    optimizer.topological_sort()
    optimizer.model.producer_name = "onnxruntime.transformers"
    return optimizer
