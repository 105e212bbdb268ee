"""``textinv bench export --model PATH|sd15-shape``: export and optimization cost per component.

Reports, per component, the seconds to export to ONNX and to optimize, each graph's size before
and after optimization, and its node count before and after. ``sd15-shape`` is SD 1.5's exact
configs with random weights (``textinv.testing.sd15_shape_model``): real costs without a download;
its UNet is 3.4 GB in fp32, so exporting it on a CPU takes minutes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textinv_client.flags import add_flags, from_flags
from textinv_export.config import ExportConfig
from textinv_export.manifest import Manifest, Target
from textinv_export.specs import Range, ShapeRanges

if TYPE_CHECKING:
    from textinv_export.exporter import ComponentReport


def add_export_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser("export", help="time ONNX export and graph optimization")
    bench.add_argument(
        "--model", help="a model folder, sd15-shape or sdxl-shape (default: embedded)"
    )
    # The export's own flags (--precision), but for what this bench fixes: ONNX, a fresh export.
    add_flags(bench, ExportConfig, skip=["out", "target", "force"])
    bench.add_argument("--out", type=Path, default=None, help="keep the graphs here")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(func=run_export_bench)


def run_export_bench(args: argparse.Namespace) -> int:
    from textinv.testing import load_benchmark_model
    from textinv_export.exporter import export_model

    model = load_benchmark_model(args.model)
    native = model.default_resolution
    config_ranges = ShapeRanges(Range(1, 1, 4), Range(native, native, native))
    with tempfile.TemporaryDirectory(prefix="textinv-bench-export-") as scratch:
        out = args.out or Path(scratch)
        config = from_flags(
            ExportConfig,
            args,
            out=out,
            target=Target.ONNX,
            ranges=config_ranges,
            force=True,
        )
        result = export_model(model, config, progress=lambda _: None)
        rows = [_row(out, report, result.manifest) for report in result.reports]
    if args.json:
        print(json.dumps({"model": args.model, "precision": args.precision, "rows": rows}))
        return 0
    print(f"export bench: {args.model}, {args.precision}, native {native} px")
    print(
        f"{'component':<13} {'export s':>9} {'optimize s':>10} {'raw MB':>9} {'opt MB':>9} "
        f"{'raw nodes':>9} {'opt nodes':>9}"
    )
    for r in rows:
        print(
            f"{r['component']:<13} {r['export_s']:>9.2f} {r['optimize_s']:>10.2f} "
            f"{r['raw_mb']:>9.1f} {r['optimized_mb']:>9.1f} {r['raw_nodes']:>9} "
            f"{r['optimized_nodes']:>9}"
        )
    return 0


def _row(out: Path, report: ComponentReport, manifest: Manifest) -> dict[str, Any]:
    """One component's costs, and its graphs' node counts read back from ``out``."""
    entry = manifest.component(report.component)
    return {
        "component": report.component.value,
        "export_s": round(report.export_seconds, 3),
        "optimize_s": round(report.optimize_seconds, 3),
        "raw_mb": round(report.source_bytes / 1e6, 2),
        "optimized_mb": round(report.graph_bytes / 1e6, 2),
        "raw_nodes": _node_count(out / entry.source.path),
        "optimized_nodes": _node_count(out / entry.graph.path),
    }


def _node_count(graph: Path) -> int:
    import onnx

    return len(onnx.load(str(graph), load_external_data=False).graph.node)
