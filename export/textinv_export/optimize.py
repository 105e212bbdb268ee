"""Graph optimization for onnxruntime, and fp16 conversion that keeps sensitive ops in fp32.

We run onnxruntime's transformer optimizer (``model_type`` ``clip``/``unet``/``vae``) with only the
fusions whose fused operators onnxruntime's CPU execution provider implements, so the optimized
graph runs on every onnxruntime build. GroupNorm, NhwcConv, BiasSplitGelu, BiasAdd and packed
QKV fuse into CUDA-only contrib operators and stay off. The UNet attention fusion of onnxruntime
1.32 crashes under numpy 2 (``int()`` of a one-element array in ``fusion_attention_unet``), so
the UNet is fused through ``unet_attention``, which fixes that one read. TensorRT never sees
these graphs: it parses the raw export.

fp16 conversion keeps graph inputs and outputs in float32 (the spec's dtypes do not change with
precision) and keeps in fp32 the operators whose range or accumulation fp16 cannot hold: the
normalizations, softmax, powers and roots, exponentials, the sinusoidal timestep embedding and
resizing.
"""

from __future__ import annotations

import logging
from pathlib import Path

from textinv_export.choices import Component, Precision
from textinv_export.onnx_export import save_graph
from textinv_export.unet_attention import optimize_unet

# The optimizer's model_type per component: which fusion patterns to look for.
MODEL_TYPES = {
    Component.TEXT_ENCODER: "clip",
    Component.TEXT_ENCODER_2: "clip",
    Component.UNET: "unet",
    Component.VAE_DECODER: "vae",
    Component.VAE_ENCODER: "vae",
}
# Fusions into contrib operators that only the CUDA/ROCm execution providers implement.
CUDA_ONLY_FUSIONS = (
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_nhwc_conv",
    "enable_bias_splitgelu",
    "enable_bias_add",
    "enable_packed_qkv",
    "enable_packed_kv",
)
FP32_OPS = (
    "LayerNormalization",
    "SkipLayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "GroupNorm",
    "Softmax",
    "Pow",
    "Sqrt",
    "ReduceMean",
    "Exp",
    "Erf",
    "Sin",
    "Cos",
    "Range",
    "Resize",
    "Upsample",
)


def optimize_graph(
    source: Path, destination: Path, component: Component, precision: Precision
) -> Path:
    """Write ``source`` optimized for onnxruntime (and in fp16 if asked) to ``destination``."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # 1. Fusions that the CPU provider runs too.
    model_type = MODEL_TYPES[component]
    options = FusionOptions(model_type)
    for name in CUDA_ONLY_FUSIONS:
        setattr(options, name, False)
    # 2. Python-side fusions only (opt_level 0): onnxruntime's own level-1/2 passes run anyway
    #    when a session loads the graph, and level 2 would tie the file to one provider. The
    #    UNet goes through unet_attention's model, whose attention fusion runs under numpy 2.
    with _quiet_onnxruntime_logs():
        if component is Component.UNET:
            optimized = optimize_unet(source, options)
        else:
            optimized = optimize_model(
                str(source),
                model_type=model_type,
                num_heads=0,
                hidden_size=0,
                opt_level=0,
                optimization_options=options,
                use_gpu=False,
            )
        # 3. fp16 with the sensitive operators and the graph's I/O left in fp32.
        if precision is Precision.FP16:
            optimized.convert_float_to_float16(keep_io_types=True, op_block_list=list(FP32_OPS))
    return save_graph(optimized.model, destination)


class _quiet_onnxruntime_logs:
    """The optimizer logs every fusion at INFO through loggers named after its modules
    (``fusion_base``, ``onnx_model_bert``, ...); libraries stay quiet, so raise them to WARNING
    while it runs."""

    PREFIXES = ("onnxruntime", "fusion", "onnx_model", "float16", "optimizer")

    def __enter__(self) -> None:
        self.saved: dict[str, int] = {}
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(self.PREFIXES):
                logger = logging.getLogger(name)
                self.saved[name] = logger.level
                logger.setLevel(max(logger.level, logging.WARNING))

    def __exit__(self, *exc: object) -> None:
        for name, level in self.saved.items():
            logging.getLogger(name).setLevel(level)
