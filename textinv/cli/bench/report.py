"""``textinv bench report``: the invert, generate and serve benchmarks in one run, as one report.

It runs each benchmark through its library function with the settings agreed here (below), and
writes to ``--out``:

- ``report.json``: every measurement, the ratios, the machine, the versions and the settings;
- ``report.md``: the same as tables;
- ``stages.png`` (latency per stage and runner), ``concurrency.png`` (the latency distribution
  under concurrent clients), ``training.png`` (training steps/s against the reference method).

Every comparison is a ratio of two figures measured in this run. Every figure is a median after
warm-up, with its spread (min-max, or percentiles under load). The report also measures:

- the machine: the CPU's instruction sets (AVX2, AVX-512, AVX512-BF16, AMX-BF16 ...), torch's
  dispatch level and the precision ``auto`` picks (``textinv.hardware``);
- its achievable peak: a GEMM microbenchmark per precision (fp32 and bf16 on the CPU; fp32, bf16
  and fp16 on CUDA) at the benchmarks' thread count (``report_peak``). The UNet's FLOPs per step
  are counted from the graph (``FlopCounterMode`` over one UNet call on the meta device, at the
  benchmark's batch and resolution: no compute), so each runner's UNet figure is a fraction of
  the measured peak of the precision it ran in, never over 100% (where a runner beats the GEMM,
  the peak becomes its figure, labelled). ``--peak-tflops`` replaces the measured peak; known
  GPUs' data-sheet figures are a reference line only;
- serving: on the model, or on the embedded model (labelled) where the model is sd15-shape,
  which has no folder for a server to load;
- time to the first image from a cold process: ``textinv serve`` against diffusers'
  ``from_pretrained`` in a fresh process, same folder, steps and size (``report_startup``).

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
    achieved_tflops,
    count_flops,
    data_sheet_peak,
    machine_info,
    native_side,
    utilization,
    versions,
)
from textinv.cli.bench.report_markdown import summary_lines, write_report
from textinv.cli.bench.report_peak import (
    CUDA_PRECISIONS,
    METHOD,
    MeasuredPeak,
    Peak,
    effective_peaks,
    measure_peaks,
)
from textinv.cli.bench.report_startup import StartupSettings, measure_startup
from textinv.cli.bench.serve import LoadResult, ServeBenchSettings, measure_serve
from textinv.testing import SD15_SHAPE
from textinv_client.choices import Precision
from textinv_server.backends import BackendName

T = TypeVar("T")
GEMM_REPEATS = 3
EMBEDDED_LABEL = "embedded model (the model is sd15-shape, which has no folder to serve)"


@dataclass(frozen=True)
class ReportSettings:
    """The agreed settings of one report (each benchmark's own settings object)."""

    model: str
    device: str
    invert: InvertBenchSettings
    generate: GenerateBenchSettings
    serve: ServeBenchSettings  # model None: the embedded model
    serve_label: str  # what the serve section measured: "the model" or the embedded model
    startup: StartupSettings
    threads: int = 0  # the benchmarks' torch threads (0: torch's default), the GEMM's too


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
        help="the peak for the fractions, every precision (default: measured by a GEMM)",
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
    """Quick: the tiny model, a few steps. Full: SD 1.5's 512 px, 50 steps, batch 4 training,
    the frozen model in ``auto`` precision (bf16 where the device has a fast bf16 path)."""
    if quick:
        invert = InvertBenchSettings(
            model=model, resolution=64, steps=3, warmup=1, threads=threads, device=device
        )
        generate = GenerateBenchSettings(
            model=model, backends=(BackendName.TORCH,), steps=4, warmup=1, repeats=3,
            threads=threads, device=device,
        )  # fmt: skip
        serve = ServeBenchSettings(model=model, concurrency=(1, 4), requests=8, steps=2)
        startup = _startup(model, "the model", serve.steps, device, threads, timeout_s=300)
        return ReportSettings(model, device, invert, generate, serve, "the model", startup, threads)
    cuda = device.startswith("cuda")
    invert = InvertBenchSettings(
        model=model, resolution=512, batch_size=4 if cuda else 1, steps=10 if cuda else 2,
        warmup=2 if cuda else 1, threads=threads, device=device, precision=Precision.AUTO,
    )  # fmt: skip
    generate = GenerateBenchSettings(
        model=model, backends=(BackendName.TORCH,) if model == SD15_SHAPE else None,
        steps=50 if cuda else 2, warmup=1, repeats=5 if cuda else 2, threads=threads,
        device=device,
    )  # fmt: skip
    servable = model != SD15_SHAPE  # else the embedded model, for serving and the cold start
    label = "the model" if servable else EMBEDDED_LABEL
    serve = ServeBenchSettings(
        model=model if servable else None, concurrency=(1, 4, 8), requests=16, steps=10
    )
    startup = _startup(serve.model, label, serve.steps, device, threads, timeout_s=1800)
    return ReportSettings(model, device, invert, generate, serve, label, startup, threads)


def _startup(
    folder: str | None, label: str, steps: int, device: str, threads: int, timeout_s: float
) -> StartupSettings:
    """Time to the first image on ``folder`` (None: the embedded model) at its native size."""
    if folder is None:
        from textinv.toy import default_model_path

        folder = str(default_model_path())
    return StartupSettings(
        model=folder, label=label, steps=steps, side=native_side(folder), device=device,
        threads=threads, timeout_s=timeout_s,
    )  # fmt: skip


# -- running ------------------------------------------------------------------------------------


def run_report(
    settings: ReportSettings,
    *,
    peak_tflops: float | None = None,
    progress: Callable[[str], object] | None = None,
) -> dict[str, Any]:
    """The benchmarks, the peak, the FLOP counts and every ratio, as one plain dict."""
    say = progress or (lambda _text: None)
    timings: dict[str, float] = {}
    # 1. Each benchmark through its library function, timed as a whole.
    say("1/5 invert: ours vs the reference method")
    invert = _timed(timings, "invert_s", lambda: measure_invert(settings.invert))
    say("2/5 generate: each backend vs diffusers' pipeline")
    generate = _timed(timings, "generate_s", lambda: measure_generate(settings.generate))
    say(f"3/5 serve ({settings.serve_label}): in-process vs gRPC, batching on and off")
    serve = _timed(timings, "serve_s", lambda: measure_serve(settings.serve))
    say(f"4/5 time to the first image ({settings.startup.label}): textinv serve vs diffusers")
    startup = _timed(timings, "startup_s", lambda: measure_startup(settings.startup))
    # 2. The UNet's FLOPs at both benchmarks' shapes, what each runner achieved, and the peak of
    #    each precision they are a share of.
    flops = count_flops(
        settings.model,
        generate["settings"]["resolution"],
        train_batch=settings.invert.batch_size,
        train_resolution=settings.invert.resolution,
    )
    achieved = achieved_tflops(invert, generate, flops)
    say("5/5 the peak: a GEMM microbenchmark per precision")
    peak, peaks = _timed(timings, "peak_s", lambda: peak_section(settings, achieved, peak_tflops))
    all_ratios = ratios(invert, generate, serve)
    if startup["first_image_speedup_vs_diffusers"] is not None:
        speedup = startup["first_image_speedup_vs_diffusers"]
        all_ratios["time_to_first_image_speedup_vs_diffusers"] = speedup
    return {
        "machine": machine_info(settings.device),
        "versions": versions(),
        "settings": {
            "model": settings.model,
            "device": settings.device,
            "threads": settings.threads,
            "invert": asdict(settings.invert),
            "generate": generate["settings"],
            "serve": asdict(settings.serve),
            "startup": asdict(settings.startup),
        },
        "invert": invert,
        "generate": generate,
        "serve": [asdict(r) for r in serve],
        "serve_model": {"model": settings.serve.model, "label": settings.serve_label},
        "startup": startup,
        "flops": flops,
        "peak": peak,
        "utilization": utilization(achieved, peaks),
        "ratios": all_ratios,
        "bench_seconds": timings,
    }


def peak_section(
    settings: ReportSettings, achieved: dict[str, tuple[str, float]], given: float | None
) -> tuple[dict[str, Any], dict[str, Peak]]:
    """The measured peaks, and per precision the peak its rows' fractions divide by: the
    benchmark device's GEMM figure (or ``given``), raised to the best row where one beats it."""
    ran_in = sorted({precision for precision, _ in achieved.values()})
    measured = measure_all_peaks(settings.device, ran_in, settings.threads)
    if given is not None:
        base, source = dict.fromkeys(ran_in, given), "--peak-tflops"
    else:
        base = {precision: found.tflops for precision, found in measured[settings.device].items()}
        source = f"GEMM microbenchmark on {settings.device}"
    peaks = effective_peaks(base, achieved, source)
    section = {
        "method": METHOD.format(repeats=GEMM_REPEATS),
        "threads": settings.threads or None,  # None: torch's default
        "measured": {
            where: {precision: found.to_dict() for precision, found in by_precision.items()}
            for where, by_precision in measured.items()
        },
        "data_sheet": data_sheet_peak(settings.device),
        "given_tflops": given,
        "used": {precision: asdict(peak) for precision, peak in peaks.items()},
    }
    return section, peaks


def measure_all_peaks(
    device: str, ran_in: list[str], threads: int
) -> dict[str, dict[str, MeasuredPeak]]:
    """device → precision → its GEMM peak: the CPU's fp32 and bf16 always, and on CUDA the GPU's
    fp32, bf16 and fp16; either way also each precision a runner ran in on ``device``."""
    cpu_wanted = [Precision.FP32.value, Precision.BF16.value]
    if not device.startswith("cuda"):
        return {device: measure_peaks(device, [*cpu_wanted, *ran_in], threads=threads,
                                      repeats=GEMM_REPEATS)}  # fmt: skip
    gpu_wanted = [p.value for p in CUDA_PRECISIONS]
    return {
        "cpu": measure_peaks("cpu", cpu_wanted, threads=threads, repeats=GEMM_REPEATS),
        device: measure_peaks(device, [*gpu_wanted, *ran_in], repeats=GEMM_REPEATS),
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
