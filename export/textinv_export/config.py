"""What one export run is: ``ExportConfig``, torch-free, so that the command line derives its
flags from these fields (``textinv_client.flags``) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textinv.choices import parse_input
from textinv_client.flags import flag
from textinv_export.choices import (
    EXPORT_PRECISIONS,
    Component,
    Precision,
    Target,
    export_precision,
)
from textinv_export.records import coerce
from textinv_export.specs import ShapeRanges

# Both onnxruntime and TensorRT 10 take opset 17 from the TorchScript-based exporter (onnx_export).
OPSET = 17


@dataclass(frozen=True)
class ExportConfig:
    """One export run. Strings are accepted for the choices (``precision="fp16"``) and parsed;
    ``precision`` must be one the exporter writes (fp32 or fp16: bf16 is refused, named)."""

    out: Path = field(metadata=flag("folder for graphs and manifest"))
    target: Target = field(
        default=Target.ONNX, metadata=flag("onnx graphs, or tensorrt engines built from them too")
    )
    precision: Precision = field(
        default=Precision.FP32,
        metadata=flag(
            "precision of the optimized graphs and engines",
            metavar="{" + ",".join(p.value for p in EXPORT_PRECISIONS) + "}",
            parse=export_precision,
        ),
    )
    ranges: ShapeRanges = field(default_factory=ShapeRanges)
    opset: int = OPSET
    force: bool = field(default=False, metadata=flag("redo work an earlier run left"))
    # (): every component the model has (text_encoder_2 for SDXL only).
    components: tuple[Component, ...] = field(
        default=(),
        metadata=flag(
            "export only these (text_encoder text_encoder_2 unet vae_decoder vae_encoder; "
            "default: all the model has)",
            metavar="NAME",
            nargs="+",
            parse=str,  # named in __post_init__, as bad input, like every other bad value here
        ),
    )

    def __post_init__(self) -> None:
        coerce(
            self,
            out=Path,
            target=lambda value: parse_input(Target, value),
            precision=export_precision,
            components=lambda names: tuple(parse_input(Component, name) for name in names),
        )
