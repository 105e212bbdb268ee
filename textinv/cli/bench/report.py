"""``textinv bench report``: the invert, generate and serve benchmarks in one run, as one report.

It runs each benchmark through its library function with the settings agreed here (below), and
writes to ``--out``:

- ``report.json``: every measurement, the ratios, the machine, the versions and the settings;
- ``report.md``: the same as tables;
- ``stages.png`` (latency per stage and runner), ``concurrency.png`` (the latency distribution
  under concurrent clients), ``training.png`` (training steps/s against the reference method).

Every comparison is a ratio of two figures measured in this run. Every figure is a median after
warm-up, with its spread (min-max, or percentiles under load). The UNet's FLOPs per step are
counted from the graph (``FlopCounterMode`` over one UNet call on the meta device, at the
benchmark's batch and resolution: no compute), so the UNet figures are also a fraction of the
hardware's peak (``--peak-tflops``; known GPUs have defaults, a CPU gets an estimate, labelled).

``--quick`` uses the tiny model and a few steps (a test runs it end to end); ``sd15-shape`` is
SD 1.5's exact configs with random weights, sized for a GPU: on a CPU expect hours.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from textinv.cli.bench.generate import GenerateBenchSettings, measure_generate
from textinv.cli.bench.generate_table import measured_rows
from textinv.cli.bench.invert import InvertBenchSettings, measure_invert
from textinv.cli.bench.report_machine import (
    count_flops,
    machine_info,
    peak_for,
    utilization,
    versions,
)
from textinv.cli.bench.report_markdown import summary_lines, write_report
from textinv.cli.bench.serve import LoadResult, ServeBenchSettings, measure_serve
from textinv.testing import SD15_SHAPE
from textinv_client.choices import Precision
from textinv_server.backends import BackendName

T = TypeVar("T")


@dataclass(frozen=True)
class ReportSettings:
    """The agreed settings of one report (each benchmark's own settings object)."""

    model: str
    device: str
    invert: InvertBenchSettings
    generate: GenerateBenchSettings
    serve: ServeBenchSettings | None  # None: the model is not a folder the server can load


def add_report_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "report",
        help="invert, generate and serve benchmarks as one report (JSON, Markdown, plots)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--model", default=SD15_SHAPE, help="a model folder, or sd15-shape")
    bench.add_argument("--out", type=Path, default=Path("bench-report"), help="output folder")
    bench.add_argument("--quick", action="store_true", help="the tiny model, few steps (seconds)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    bench.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the hardware's peak for the fractions (default: known GPUs' bf16, else estimated)",
    )
    bench.set_defaults(func=run_report_bench)


def run_report_bench(args: argparse.Namespace) -> int:
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be > 0, got {args.peak_tflops}")
    with tempfile.TemporaryDirectory(prefix="textinv-report-") as scratch:
        model = _tiny_model(Path(scratch)) if args.quick else args.model
        settings = agreed_settings(model, args.quick, args.device, args.threads)
        print(f"bench report: {model} on {args.device}{' (quick)' if args.quick else ''}")
        report = run_report(settings, peak_tflops=args.peak_tflops, progress=print)
    report["settings"]["quick"] = args.quick
    written = write_report(report, args.out)
    for line in summary_lines(report):
        print(line)
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def _tiny_model(scratch: Path) -> str:
    from textinv.testing import build_tiny_model

    return str(build_tiny_model(scratch / "tiny-sd"))


# -- the agreed settings ------------------------------------------------------------------------


def agreed_settings(model: str, quick: bool, device: str, threads: int = 0) -> ReportSettings:
    """Quick: the tiny model, a few steps. Full: SD 1.5's 512 px, 50 steps, batch 4 training."""
    if quick:
        invert = InvertBenchSettings(
            model=model, resolution=64, steps=3, warmup=1, threads=threads, device=device
        )
        generate = GenerateBenchSettings(
            model=model, backends=(BackendName.TORCH,), steps=4, warmup=1, repeats=3,
            threads=threads, device=device,
        )  # fmt: skip
        quick_serve = ServeBenchSettings(model=model, concurrency=(1, 4), requests=8, steps=2)
        return ReportSettings(model, device, invert, generate, quick_serve)
    cuda = device.startswith("cuda")
    invert = InvertBenchSettings(
        model=model, resolution=512, batch_size=4 if cuda else 1, steps=10 if cuda else 2,
        warmup=2 if cuda else 1, threads=threads, device=device,
        precision=Precision.BF16 if cuda else Precision.FP32,
    )  # fmt: skip
    generate = GenerateBenchSettings(
        model=model, backends=(BackendName.TORCH,) if model == SD15_SHAPE else None,
        steps=50 if cuda else 2, warmup=1, repeats=5 if cuda else 2, threads=threads,
        device=device,
    )  # fmt: skip
    serve: ServeBenchSettings | None = None
    if model != SD15_SHAPE:
        serve = ServeBenchSettings(model=model, concurrency=(1, 4, 8), requests=16, steps=10)
    return ReportSettings(model, device, invert, generate, serve)


# -- running ------------------------------------------------------------------------------------


def run_report(
    settings: ReportSettings,
    *,
    peak_tflops: float | None = None,
    progress: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """The three benchmarks, the FLOP counts and every ratio, as one plain dict."""
    say = progress or (lambda _text: None)
    timings: dict[str, float] = {}
    # 1. Each benchmark through its library function, timed as a whole.
    say("1/3 invert: ours vs the reference method")
    invert = _timed(timings, "invert_s", lambda: measure_invert(settings.invert))
    say("2/3 generate: each backend vs diffusers' pipeline")
    generate = _timed(timings, "generate_s", lambda: measure_generate(settings.generate))
    serve: list[LoadResult] = []
    if settings.serve is not None:
        serve_settings = settings.serve
        say("3/3 serve: in-process vs gRPC, batching on and off")
        serve = _timed(timings, "serve_s", lambda: measure_serve(serve_settings))
    # 2. The UNet's FLOPs at both benchmarks' shapes, and the hardware's peak they are a share of.
    peak = peak_for(settings.device, peak_tflops)
    flops = count_flops(
        settings.model,
        generate["settings"]["resolution"],
        train_batch=settings.invert.batch_size,
        train_resolution=settings.invert.resolution,
    )
    return {
        "machine": machine_info(settings.device),
        "versions": versions(),
        "settings": {
            "model": settings.model,
            "device": settings.device,
            "invert": asdict(settings.invert),
            "generate": generate["settings"],
            "serve": asdict(settings.serve) if settings.serve else None,
        },
        "invert": invert,
        "generate": generate,
        "serve": [asdict(r) for r in serve],
        "flops": flops,
        "peak": asdict(peak),
        "utilization": utilization(invert, generate, flops, peak),
        "ratios": ratios(invert, generate, serve),
        "bench_seconds": timings,
    }


def _timed(timings: dict[str, float], key: str, work: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = work()
    timings[key] = time.perf_counter() - started
    return result


def ratios(
    invert: dict[str, Any], generate: dict[str, Any], serve: list[LoadResult]
) -> dict[str, float]:
    """Every comparison of the run, each a ratio of two of its own measurements."""
    out = {
        "invert_speedup_vs_reference": invert["speedup"],
        "invert_peak_rss_vs_reference": invert["peak_rss_ratio"],
    }
    for name, row in measured_rows(generate["runners"]).items():
        if name != "diffusers" and row["speedup_e2e"] is not None:  # None: diffusers failed
            out[f"generate_{name}_e2e_speedup_vs_diffusers"] = row["speedup_e2e"]
            out[f"generate_{name}_unet_step_speedup_vs_diffusers"] = row["speedup_unet_step"]
    by_key = {(r.mode, r.concurrency): r for r in serve}
    local, remote = by_key.get(("in-process", 1)), by_key.get(("grpc", 1))
    if local and remote and local.p50_ms > 0:
        out["serve_grpc_p50_vs_in_process_c1"] = remote.p50_ms / local.p50_ms
    for (mode, level), on in by_key.items():
        off = by_key.get(("unbatched", level))
        if mode == "grpc" and off and off.throughput_rps > 0:
            out[f"serve_batching_throughput_vs_unbatched_c{level}"] = (
                on.throughput_rps / off.throughput_rps
            )
    return out
