"""``textinv export``: thin over ``textinv_export.exporter`` and ``textinv_export.parity``.

textinv export --model PATH --out DIR [--target onnx|tensorrt] [--precision fp32|fp16]
    [--batch-sizes MIN:OPT:MAX] [--resolutions MIN:OPT:MAX] [--check] [--force]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from textinv_export.manifest import Target
from textinv_export.specs import Component, Precision, Range, ShapeRanges


def add_export_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the text encoder, UNet and VAE to ONNX (and TensorRT engines)"
    )
    parser.add_argument(
        "--model", help="a diffusers-layout SD 1.x/2.x folder (default: the embedded model)"
    )
    parser.add_argument("--out", required=True, type=Path, help="folder for graphs and manifest")
    parser.add_argument("--target", choices=[t.value for t in Target], default=Target.ONNX.value)
    parser.add_argument(
        "--precision", choices=[p.value for p in Precision], default=Precision.FP32.value
    )
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
        "--components",
        nargs="+",
        default=None,
        metavar="NAME",
        help="export only these (text_encoder unet vae_decoder vae_encoder)",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare each graph with PyTorch in onnxruntime"
    )
    parser.add_argument("--force", action="store_true", help="redo work an earlier run left")
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from textinv.model import load_base_model
    from textinv_export.exporter import ExportConfig, check_writable, export_model, parse_components

    # 1. Everything that can be wrong with the arguments fails before the model loads.
    target = Target(args.target)
    if target is Target.TENSORRT:
        from textinv_export.tensorrt import require_tensorrt

        require_tensorrt()
    batch = Range.parse(args.batch_sizes, "--batch-sizes")
    resolution = (
        None if args.resolutions is None else Range.parse(args.resolutions, "--resolutions")
    )
    if resolution is not None:
        ShapeRanges(batch, resolution)  # checks multiples of 8
    components = tuple(Component) if args.components is None else parse_components(args.components)
    check_writable(args.out)
    # 2. Load, export, report.
    model = load_base_model(args.model)
    ranges = ShapeRanges(batch, resolution or default_resolutions(model.default_resolution))
    config = ExportConfig(
        out=args.out,
        target=target,
        precision=Precision(args.precision),
        ranges=ranges,
        force=args.force,
        components=components,
    )
    result = export_model(model, config, progress=print)
    for report in result.reports:
        state = "reused" if report.reused else "written"
        print(
            f"{report.component.value}: {state}; raw {report.source_bytes / 1e6:.1f} MB, "
            f"optimized {report.graph_bytes / 1e6:.1f} MB"
        )
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    # 3. Parity, if asked: exit 1 when any component is outside its tolerance.
    return run_checks(model, result.manifest, Path(args.out)) if args.check else 0


def run_checks(model, manifest, out: Path) -> int:  # (BaseModel, Manifest, Path) -> int
    from textinv_export.parity import check_parity, parity_cases
    from textinv_export.specs import export_module

    failed = []
    for component, entry in manifest.components.items():
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
