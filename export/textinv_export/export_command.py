"""``textinv export``: thin over ``textinv_export.exporter`` and ``textinv_export.parity``.

textinv export --model PATH --out DIR [--target onnx|tensorrt] [--precision fp32|fp16]
    [--batch-sizes MIN:OPT:MAX] [--resolutions MIN:OPT:MAX] [--prompt-chunks N]
    [--components NAME ...] [--check] [--force]

``--out``, ``--target``, ``--precision``, ``--components`` and ``--force`` are ``ExportConfig``'s
own fields (``textinv_client.flags``); the ranges and the model are read here. An export of some
components into a folder that holds an export of the same model, precision, opset and ranges keeps
the others (``export_model``); ``--check`` compares the components this run exported.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from textinv_client.flags import add_flags, from_flags
from textinv_export.choices import Component, Target
from textinv_export.config import ExportConfig
from textinv_export.shapes import parse_count
from textinv_export.specs import Range, ShapeRanges

if TYPE_CHECKING:
    from textinv.model import BaseModel
    from textinv_export.manifest import Manifest


def add_export_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the text encoder, UNet and VAE to ONNX (and TensorRT engines)"
    )
    parser.add_argument(
        "--model", help="a diffusers-layout SD 1.x/2.x folder (default: the embedded model)"
    )
    add_flags(parser, ExportConfig, required=["out"])
    parser.add_argument(
        "--batch-sizes", default="1:1:4", metavar="MIN:OPT:MAX", help="images per call"
    )
    parser.add_argument(
        "--resolutions",
        default=None,
        metavar="MIN:OPT:MAX",
        help="image side in pixels, multiples of 8 (default: half to 1.5× the model's own)",
    )
    parser.add_argument(
        "--prompt-chunks",
        default="3",
        metavar="N",
        help="the most 77-token chunks of a long prompt the graphs take (1 to 8; default 3)",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare each graph with PyTorch in onnxruntime"
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from textinv.model import load_base_model
    from textinv_export.exporter import check_writable, export_model

    # 1. Everything that can be wrong with the arguments fails before the model loads.
    if args.target is Target.TENSORRT:
        from textinv_export.tensorrt import require_tensorrt

        require_tensorrt()
    batch = Range.parse(args.batch_sizes, "--batch-sizes")
    resolution = (
        None if args.resolutions is None else Range.parse(args.resolutions, "--resolutions")
    )
    chunks = parse_count(args.prompt_chunks, "--prompt-chunks")
    # Checks the precision, the multiples of 8 and the chunks; without --resolutions the model's
    # own resolutions replace the default ones once it is loaded.
    ranges = ShapeRanges(batch, resolution or ShapeRanges().resolution, chunks)
    config = from_flags(ExportConfig, args, ranges=ranges)
    check_writable(config.out)
    # 2. Load, export, report.
    model = load_base_model(args.model)
    if resolution is None:
        native = default_resolutions(model.default_resolution)
        config = replace(config, ranges=replace(ranges, resolution=native))
    result = export_model(model, config, progress=print)
    for report in result.reports:
        state = "reused" if report.reused else "written"
        print(
            f"{report.component.value}: {state}; raw {report.source_bytes / 1e6:.1f} MB, "
            f"optimized {report.graph_bytes / 1e6:.1f} MB"
        )
    listed = ", ".join(c.value for c in result.manifest.components)
    print(f"manifest: {config.out / 'manifest.json'} ({listed})")
    # 3. Parity, if asked: exit 1 when any component is outside its tolerance.
    if not args.check:
        return 0
    asked = [report.component for report in result.reports]
    return run_checks(model, result.manifest, config.out, asked)


def run_checks(
    model: BaseModel, manifest: Manifest, out: Path, components: Iterable[Component]
) -> int:
    """Parity of each of ``components`` in ``manifest``: 1 if any is outside its tolerance."""
    from textinv_export.modules import export_module
    from textinv_export.parity import check_parity, parity_cases

    failed = []
    for component in components:
        entry = manifest.component(component)
        report = check_parity(
            export_module(component, model),
            entry.spec,
            out / entry.graph.path,
            manifest.precision,
            parity_cases(entry.spec),
        )
        for line in report.lines():
            print(line)
        if not report.passed:
            failed.append(component.value)
    if failed:
        print(f"parity FAILED for {', '.join(failed)}")
        return 1
    print("parity ok for every component")
    return 0


def default_resolutions(native: int) -> Range:
    """Half to 1.5× the model's native side, in steps of 64: 256:512:768 for SD 1.5."""
    step = 64 if native >= 128 else 8
    low = max(step, native // 2 // step * step)
    high = max(native, native * 3 // 2 // step * step)
    return Range(low, native, high)
