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
import json
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from textinv.bench_invert import InvertBenchSettings, measure_invert
from textinv_server.bench_generate import GenerateBenchSettings, measure_generate
from textinv_server.bench_serve import LoadResult, ServeBenchSettings, measure_serve

SD15_SHAPE = "sd15-shape"
# Dense bf16 tensor-core peaks from the vendors' data sheets (SXM parts), TFLOP/s.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
# A CPU core with AVX2: 2 FMA units × 8 fp32 lanes × 2 FLOPs per cycle.
CPU_FLOPS_PER_CYCLE = 32
CPU_GHZ_GUESS = 2.5


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str  # where the figure comes from ("estimate: ..." when it is one)


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
            model=model, backends=("torch",), steps=4, warmup=1, repeats=3, threads=threads,
            device=device,
        )  # fmt: skip
        quick_serve = ServeBenchSettings(model=model, concurrency=(1, 4), requests=8, steps=2)
        return ReportSettings(model, device, invert, generate, quick_serve)
    cuda = device.startswith("cuda")
    invert = InvertBenchSettings(
        model=model, resolution=512, batch_size=4 if cuda else 1, steps=10 if cuda else 2,
        warmup=2 if cuda else 1, threads=threads, device=device,
        precision="bf16" if cuda else "fp32",
    )  # fmt: skip
    generate = GenerateBenchSettings(
        model=model, backends=("torch",) if model == SD15_SHAPE else None,
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
    progress: Any = None,
) -> dict[str, Any]:
    """The three benchmarks, the FLOP counts and every ratio, as one plain dict."""

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    timings: dict[str, float] = {}
    say("1/3 invert: ours vs the reference method")
    started = time.perf_counter()
    invert = measure_invert(settings.invert)
    timings["invert_s"] = time.perf_counter() - started
    say("2/3 generate: each backend vs diffusers' pipeline")
    started = time.perf_counter()
    generate = measure_generate(settings.generate)
    timings["generate_s"] = time.perf_counter() - started
    serve: list[LoadResult] = []
    if settings.serve is not None:
        say("3/3 serve: in-process vs gRPC, batching on and off")
        started = time.perf_counter()
        serve = measure_serve(settings.serve)
        timings["serve_s"] = time.perf_counter() - started
    peak = peak_for(settings.device, peak_tflops)
    flops = count_flops(settings, generate["settings"]["resolution"])
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


def ratios(
    invert: dict[str, Any], generate: dict[str, Any], serve: list[LoadResult]
) -> dict[str, float]:
    """Every comparison of the run, each a ratio of two of its own measurements."""
    out = {
        "invert_speedup_vs_reference": invert["speedup"],
        "invert_peak_rss_vs_reference": invert["peak_rss_ratio"],
    }
    for name, row in generate["runners"].items():
        if name != "diffusers":
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


# -- FLOPs and the hardware's peak --------------------------------------------------------------


def count_flops(settings: ReportSettings, side: int) -> dict[str, Any]:
    """The UNet's FLOPs, counted from its graph on the meta device (shapes only, no compute):
    one denoising step at the generate benchmark's batch (2 rows: CFG's two halves) and size,
    and one training step (forward + backward to the inputs) at the invert benchmark's."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    config = _unet_config(settings.model)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).requires_grad_(False)  # frozen
    factor = 8 if settings.model == SD15_SHAPE else _vae_factor(settings.model)
    width = int(config["cross_attention_dim"])
    channels = int(config["in_channels"])

    def unet_flops(rows: int, pixels: int, backward: bool) -> int:
        cells = pixels // factor
        with torch.device("meta"):
            sample = torch.randn(rows, channels, cells, cells)
            hidden = torch.randn(rows, 77, width, requires_grad=backward)
            t = torch.full((rows,), 500.0)
        with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
            out = unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]
            if backward:
                out.float().square().mean().backward()
        return int(counter.get_total_flops())

    step = unet_flops(2, side, backward=False)
    train = unet_flops(settings.invert.batch_size, settings.invert.resolution, backward=True)
    return {
        "method": "torch.utils.flop_counter.FlopCounterMode, one UNet call on the meta device",
        "unet_step_rows": 2,
        "unet_step_resolution": side,
        "unet_flops_per_denoising_step": step,
        "train_batch": settings.invert.batch_size,
        "train_resolution": settings.invert.resolution,
        "unet_flops_per_train_step": train,
        "note": "UNet only (text encoder and VAE excluded); training counts forward + backward "
        "to the inputs (the UNet's weights are frozen)",
    }


def _unet_config(model: str) -> dict[str, Any]:
    if model == SD15_SHAPE:
        from textinv.testing import sd15_shape_components

        with torch.device("meta"):
            return dict(sd15_shape_components()["unet"].config)
    return json.loads((Path(model) / "unet" / "config.json").read_text())  # type: ignore[no-any-return]


def _vae_factor(model: str) -> int:
    config = json.loads((Path(model) / "vae" / "config.json").read_text())
    return int(2 ** (len(config["block_out_channels"]) - 1))


def peak_for(device: str, given: float | None) -> Peak:
    """The peak the fractions use: the caller's, a known GPU's bf16 figure, or a CPU estimate."""
    if given is not None:
        return Peak(given, "--peak-tflops")
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return Peak(tflops, f"{name}: dense bf16 tensor-core peak, data sheet")
        return Peak(float("nan"), f"{name}: unknown peak; pass --peak-tflops")
    threads = torch.get_num_threads()
    tflops = threads * CPU_GHZ_GUESS * CPU_FLOPS_PER_CYCLE / 1000
    return Peak(
        tflops,
        f"estimate: {threads} cores × {CPU_GHZ_GUESS} GHz × {CPU_FLOPS_PER_CYCLE} fp32 "
        "FLOP/cycle (AVX2 FMA); not measured",
    )


def utilization(
    invert: dict[str, Any], generate: dict[str, Any], flops: dict[str, Any], peak: Peak
) -> dict[str, Any]:
    """Achieved TFLOP/s of the UNet per runner and method, and the fraction of ``peak``."""
    step_flops = flops["unet_flops_per_denoising_step"]
    rows: dict[str, Any] = {}
    for name, row in generate["runners"].items():
        tflops = step_flops / (row["unet_step"]["median_ms"] / 1000) / 1e12
        rows[f"generate/{name}"] = {"tflops": tflops, "fraction_of_peak": tflops / peak.tflops}
    for method in ("textinv", "reference"):
        seconds = invert[method]["median_step_s"]
        tflops = flops["unet_flops_per_train_step"] / seconds / 1e12
        rows[f"invert/{method}"] = {"tflops": tflops, "fraction_of_peak": tflops / peak.tflops}
    return rows


# -- machine and versions -----------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "onnxruntime", "numpy", "grpcio"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["textinv_commit"] = _git_commit()
    return found


def _git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


# -- writing ------------------------------------------------------------------------------------


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """``report.json``, ``report.md`` and the plots (where matplotlib is installed)."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "report.json", out / "report.md"]
    try:
        from textinv_server import bench_plots
    except ImportError as error:  # matplotlib missing: tables only, and say so
        report.setdefault("notes", []).append(f"plots skipped: {error}")
    else:
        written += bench_plots.draw_all(report, out)
    written[0].write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    written[1].write_text(markdown(report))
    return written


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = ["# textinv benchmark report", ""]
    lines += _md_machine(report)
    lines += _md_ratios(report["ratios"])
    lines += _md_invert(report["invert"])
    lines += _md_generate(report["generate"])
    lines += _md_serve(report["serve"])
    lines += _md_flops(report)
    lines += ["## Settings", "", "```json", json.dumps(report["settings"], indent=2,
              default=_json_default), "```", ""]  # fmt: skip
    if report.get("notes"):
        lines += ["## Notes", "", *[f"- {note}" for note in report["notes"]], ""]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _md_machine(report: dict[str, Any]) -> list[str]:
    rows = [[key, str(value)] for key, value in report["machine"].items()]
    rows += [[key, value] for key, value in report["versions"].items()]
    return ["## Machine and versions", "", *_table(["", ""], rows)]


def _md_ratios(ratios: dict[str, float]) -> list[str]:
    rows = [[name, f"{value:.3f}"] for name, value in ratios.items()]
    header = ["comparison (same run)", "ratio"]
    return ["## Ratios", "", "Speed-ups are ours ÷ baseline in throughput.", "",
            *_table(header, rows)]  # fmt: skip


def _md_invert(invert: dict[str, Any]) -> list[str]:
    rows = []
    for method in ("textinv", "reference"):
        r = invert[method]
        rows.append([
            method, f"{r['steps_per_s']:.3f}", f"{r['median_step_s'] * 1000:.1f}",
            f"{r['min_step_s'] * 1000:.1f}–{r['max_step_s'] * 1000:.1f}",
            f"{r['peak_rss_mib']:.0f}",
        ])  # fmt: skip
    s = invert["settings"]
    title = (
        f"## Training (invert): {s['resolution']} px, batch {s['batch_size']}, "
        f"{s['precision']}, {s['steps']} timed steps after {s['warmup']} warm-up"
    )
    header = ["method", "steps/s", "median ms/step", "min–max ms", "peak RSS MiB"]
    return [title, "", *_table(header, rows)]


def _md_generate(generate: dict[str, Any]) -> list[str]:
    s = generate["settings"]
    title = (
        f"## Generation: {s['resolution']}² px, {s['steps']} steps ({s['scheduler']}), "
        f"{s['warmup']} warm-up + {s['repeats']} runs, {s['device']}, weights {s['weights']}"
    )
    rows = []
    for name, row in generate["runners"].items():
        rows.append([
            name, _spread(row["e2e"]), _spread(row["text_encoder"]), _spread(row["unet_step"]),
            _spread(row["vae_decode"]), f"{row['speedup_e2e']:.2f}",
            f"{row['speedup_unet_step']:.2f}",
        ])  # fmt: skip
    header = ["runner", "end to end ms", "text encoder ms", "UNet step ms", "VAE decode ms",
              "e2e × diffusers", "step × diffusers"]  # fmt: skip
    lines = [title, "", "Median (min–max).", "", *_table(header, rows)]
    concepts = generate.get("concepts")
    if concepts:
        lines += [
            f"Concepts on {concepts['backend']}: end to end {concepts['e2e_0_concepts_ms']:.1f} "
            f"ms with none, {concepts['e2e_3_concepts_ms']:.1f} ms with 3; adding one to a "
            f"running pipeline {concepts['add_concept_ms']:.3f} ms, reload: "
            f"{concepts['backend_reloaded']}.",
            "",
        ]
    return lines


def _spread(stats: dict[str, float]) -> str:
    return f"{stats['median_ms']:.1f} ({stats['min_ms']:.1f}–{stats['max_ms']:.1f})"


def _md_serve(serve: list[dict[str, Any]]) -> list[str]:
    if not serve:
        return ["## Serving", "", "Not measured (the server needs a model folder).", ""]
    rows = [
        [r["mode"], str(r["concurrency"]), str(r["requests"]), str(r["failures"]),
         f"{r['p50_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['p99_ms']:.1f}",
         f"{r['throughput_rps']:.2f}"]
        for r in serve
    ]  # fmt: skip
    header = ["mode", "clients", "requests", "failed", "p50 ms", "p95 ms", "p99 ms", "req/s"]
    return ["## Serving under concurrency", "", *_table(header, rows)]


def _md_flops(report: dict[str, Any]) -> list[str]:
    flops, peak = report["flops"], report["peak"]
    lines = [
        "## FLOPs and the hardware's peak",
        "",
        f"UNet per denoising step ({flops['unet_step_rows']} rows, "
        f"{flops['unet_step_resolution']} px): {flops['unet_flops_per_denoising_step'] / 1e9:.2f}"
        f" GFLOP; per training step (batch {flops['train_batch']}, "
        f"{flops['train_resolution']} px, forward + backward): "
        f"{flops['unet_flops_per_train_step'] / 1e9:.2f} GFLOP. Counted with {flops['method']}.",
        "",
        f"Peak: {peak['tflops']:.3f} TFLOP/s ({peak['source']}).",
        "",
    ]
    rows = [
        [name, f"{u['tflops']:.4f}", f"{100 * u['fraction_of_peak']:.2f}%"]
        for name, u in report["utilization"].items()
    ]
    return lines + _table(["UNet in", "achieved TFLOP/s", "of peak"], rows)


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {value:.3f}" for name, value in report["ratios"].items()]
    for name, u in report["utilization"].items():
        lines.append(
            f"{name}: {u['tflops']:.4f} TFLOP/s, {100 * u['fraction_of_peak']:.2f}% of peak"
        )
    return lines
