"""The exporter's closed choices: which component, which target, and the precisions it exports.

``Precision`` is the project's one (``textinv_client.choices``); the exporter takes only
``EXPORT_PRECISIONS`` of it (fp32 and fp16). bf16 is for the torch backend and the trainer: the
optimized ONNX graphs and TensorRT engines have no bf16 variant, so ``export_precision`` refuses it
with the value named.
"""

from __future__ import annotations

from textinv.errors import InvalidInputError
from textinv_client.choices import Choice, Precision, UnknownChoiceError

__all__ = [
    "EXPORT_PRECISIONS",
    "SDXL_ONLY",
    "SD_COMPONENTS",
    "Component",
    "Precision",
    "Target",
    "export_precision",
]

EXPORT_PRECISIONS = (Precision.FP32, Precision.FP16)


class Component(Choice):
    """An exportable part of the base model: one graph, one spec, one engine."""

    __choice_name__ = "component"

    TEXT_ENCODER = "text_encoder"
    TEXT_ENCODER_2 = "text_encoder_2"  # SDXL's second (OpenCLIP, with projection)
    UNET = "unet"
    VAE_DECODER = "vae_decoder"
    VAE_ENCODER = "vae_encoder"


# What only an SDXL model has; every other component, every model.
SDXL_ONLY = (Component.TEXT_ENCODER_2,)
SD_COMPONENTS = tuple(c for c in Component if c not in SDXL_ONLY)  # an SD 1.x/2.x model's


class Target(Choice):
    """What an export produces: ONNX graphs only, or TensorRT engines built from them too."""

    __choice_name__ = "target"

    ONNX = "onnx"
    TENSORRT = "tensorrt"


def export_precision(value: Precision | str) -> Precision:
    """``value`` as a precision the exporter writes, or ``InvalidInputError`` naming it."""
    try:
        precision = Precision.parse(value)
    except UnknownChoiceError:
        raise _not_exported(value) from None
    if precision not in EXPORT_PRECISIONS:
        raise _not_exported(value, f" ({precision.value} is for the torch backend and the trainer)")
    return precision


def _not_exported(value: Precision | str, why: str = "") -> InvalidInputError:
    spellings = ", ".join(p.value for p in EXPORT_PRECISIONS)
    return InvalidInputError(
        f"the exporter has no precision {str(value)!r}; choose one of {spellings}{why}"
    )
