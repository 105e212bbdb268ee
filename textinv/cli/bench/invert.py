"""``textinv bench invert``: our trainer's steps/s and peak memory next to the reference method's.

The reference is the method of diffusers' ``examples/textual_inversion/textual_inversion.py``
(``textual_inversion_sdxl.py`` for SDXL: both encoders' whole tables), reimplemented here step for
step (the example itself needs torchvision, which does not import next
to the CPU torch build): the placeholder is added to the tokenizer, the *whole* token-embedding
table is trainable under AdamW, the original rows are copied back after every optimizer step, and
every step loads the images from disk, resizes them and runs the VAE encoder.

Each method runs in its own subprocess, so their peak resident memory (``ru_maxrss``) never mixes;
both build the same model with the same seed, use the same images, batch, resolution, prompts and
thread count, and are timed per optimizer step (median after ``--warmup`` steps), in wall-clock
seconds and in the process's CPU seconds. On a shared machine the CPU seconds are the figure that
load does not move (with one thread they equal the wall time of an idle machine); with more threads
they also count the threads' waiting.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from textinv.choices import coerce_choices
from textinv.hardware import cpu_features
from textinv_client.choices import Precision
from textinv_client.flags import add_flags, flag, flag_fields, flag_name, from_flags

RESULT_PREFIX = "BENCH_RESULT "  # the worker's one result line on stdout
TOKEN = "<bench-concept>"
INIT = "toy"
METHODS = ("textinv", "reference")
SAME_PRECISION = "reference_same_precision"  # the reference again, in ours' precision
WORKER_MODULE = "textinv.cli.bench.invert_worker"


@dataclass(frozen=True)
class InvertBenchSettings:
    """One ``bench invert`` run: both methods get exactly these."""

    model: str = field(
        default="sd15-shape",
        metadata=flag("a diffusers model folder, or sd15-shape / sdxl-shape"),
    )
    resolution: int = field(default=256, metadata=flag("training image side in px"))
    batch_size: int = field(default=1, metadata=flag("images per optimizer step"))
    steps: int = field(default=3, metadata=flag("timed steps per method"))
    warmup: int = field(default=1, metadata=flag("untimed steps first"))
    vectors: int = field(default=1, metadata=flag("vectors of the learned word"))
    images: str | None = field(default=None, metadata=flag("an image folder (default: 4 made up)"))
    threads: int = field(default=0, metadata=flag("torch threads (0: torch's default)"))
    device: str = field(default="cpu", metadata=flag("cpu, cuda, cuda:1 ..."))
    # auto: ours as the trainer resolves it; the reference as diffusers' example runs by default
    # (fp32), and again in ours' precision when that differs (bf16 against bf16).
    precision: Precision = field(
        default=Precision.AUTO,
        metadata=flag(
            "auto, fp32, or bf16/fp16 as diffusers' example runs them: frozen UNet and VAE in "
            "that dtype"
        ),
    )

    def __post_init__(self) -> None:
        coerce_choices(self)  # callers may spell the precision as text ("bf16")
        for name in ("resolution", "batch_size", "steps", "vectors"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class StepTimes:
    """Every optimizer step of one method, warm-up included, and the untimed setup before."""

    step_s: list[float]  # wall-clock seconds per step
    cpu_step_s: list[float]  # this process's CPU seconds per step
    setup_s: float


def add_invert_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser(
        "invert",
        help="inversion steps/s and peak memory: ours vs diffusers' example method",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, InvertBenchSettings)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_bench)


def measure_invert(settings: InvertBenchSettings, timeout_s: float | None = None) -> dict[str, Any]:
    """Both methods, each in its own subprocess; their results and the ratios, as plain data.
    ``timeout_s`` bounds both workers together (``subprocess.TimeoutExpired`` past it)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with tempfile.TemporaryDirectory(prefix="textinv-bench-") as scratch:
        images = settings.images or str(_make_images(Path(scratch) / "images"))
        with_images = replace(settings, images=images)
        results = {
            method: _run_worker(method, with_images, Path(scratch) / method, deadline)
            for method in METHODS
        }
        ours, ref = results["textinv"], results["reference"]
        same = ref
        if ours["precision"] != ref["precision"]:  # auto picked bf16: the reference in bf16 too
            in_ours = replace(with_images, precision=Precision.parse(ours["precision"]))
            same = _run_worker("reference", in_ours, Path(scratch) / SAME_PRECISION, deadline)
    cuda = "peak_cuda_mib" in ours and "peak_cuda_mib" in ref
    return {
        "model": settings.model,
        "resolution": settings.resolution,
        "batch_size": settings.batch_size,
        "timed_steps": settings.steps,
        "warmup_steps": settings.warmup,
        "threads": ours["threads"],
        "settings": asdict(settings),
        "textinv": ours,
        "reference": ref,
        "precision": {"textinv": ours["precision"], "reference": ref["precision"]},
        "speedup": ours["steps_per_s"] / ref["steps_per_s"],
        # Ours against the reference in ours' precision: what our code adds beyond the dtype.
        SAME_PRECISION: same,
        "speedup_same_precision": ours["steps_per_s"] / same["steps_per_s"],
        "cpu_speedup": ours["steps_per_cpu_s"] / ref["steps_per_cpu_s"],
        # Training's peaks (after the model is built: each row's peak_rss_is_training_only
        # says whether Linux let the worker restart the count there).
        "peak_rss_ratio": ours["peak_rss_mib"] / ref["peak_rss_mib"],
        "peak_cuda_ratio": ours["peak_cuda_mib"] / ref["peak_cuda_mib"] if cuda else None,
        # Estimates, not measurements: load + setup + 1000 × the median step, per method.
        "estimated_1000_steps_s": {
            method: results[method]["estimated_1000_steps_s"] for method in METHODS
        },
    }


def run_bench(args: argparse.Namespace) -> int:
    settings = from_flags(InvertBenchSettings, args)
    summary = measure_invert(settings)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    _print_summary(settings, summary)
    return 0


def _print_summary(settings: InvertBenchSettings, summary: dict[str, Any]) -> None:
    ours, ref = summary["textinv"], summary["reference"]
    print(
        f"textinv bench invert: model {settings.model}, {settings.resolution} px, batch "
        f"{settings.batch_size}, {settings.steps} timed steps after {settings.warmup} warm-up, "
        f"{ours['threads']} threads, {settings.device}, precision {settings.precision}; "
        f"{cpu_features().describe()}"
    )
    print(
        f"{'method':<14} {'steps/s':>9} {'s/step':>8} {'peak RSS MiB':>13} "
        f"{'after load MiB':>15} {'setup s':>8} {'min s/step':>11} {'CPU s/step':>11} "
        f"{'load avg':>8}"
    )
    same = summary[SAME_PRECISION]
    rows = [(f"textinv {ours['precision']}", ours), (f"ref {ref['precision']}", ref)]
    if same is not ref:
        rows.append((f"ref {same['precision']}", same))
    for name, r in rows:
        print(
            f"{name:<14} {r['steps_per_s']:>9.4f} {r['median_step_s']:>8.3f} "
            f"{r['peak_rss_mib']:>13.0f} {r['rss_after_load_mib']:>15.0f} {r['setup_s']:>8.2f} "
            f"{r['min_step_s']:>11.3f} {r['median_cpu_step_s']:>11.3f} "
            f"{(r['load_average'] or [math.nan])[0]:>8.2f}"
        )
    print(
        f"speedup (textinv {ours['precision']} / reference {ref['precision']} steps/s): "
        f"{summary['speedup']:.2f}× wall-clock, {summary['cpu_speedup']:.2f}× per CPU second; "
        f"peak memory textinv / reference: {summary['peak_rss_ratio']:.3f}"
    )
    if ours["peak_rss_is_training_only"] and ref["peak_rss_is_training_only"]:
        print(
            f"(peak RSS counts training alone; building the model peaked at "
            f"{ours['build_peak_rss_mib']:.0f} MiB for textinv, {ref['build_peak_rss_mib']:.0f} "
            f"MiB for the reference)"
        )
    if same is not ref:
        print(
            f"speedup at the same precision (textinv / reference, both {same['precision']}): "
            f"{summary['speedup_same_precision']:.2f}× wall-clock"
        )
    if summary["peak_cuda_ratio"] is not None:
        print(
            f"peak CUDA memory: textinv {ours['peak_cuda_mib']:.0f} MiB, reference "
            f"{ref['peak_cuda_mib']:.0f} MiB ({summary['peak_cuda_ratio']:.3f})"
        )
    estimate = summary["estimated_1000_steps_s"]
    print(
        f"time to 1000 steps, estimated (load + setup + warm-up steps + the rest × median "
        f"step): textinv "
        f"{estimate['textinv']:.0f} s, reference {estimate['reference']:.0f} s"
    )


def settings_argv(settings: InvertBenchSettings) -> list[str]:
    """The flags that rebuild ``settings`` in a worker (``from_flags`` on the other side)."""
    argv: list[str] = []
    for item, spec, _hint in flag_fields(InvertBenchSettings):
        value = getattr(settings, item.name)
        if value is not None:
            argv += [flag_name(item, spec), str(value)]
    return argv


def _run_worker(
    method: str, settings: InvertBenchSettings, scratch: Path, deadline: float | None
) -> dict[str, Any]:
    command = [sys.executable, "-m", WORKER_MODULE, "--worker", method, "--scratch", str(scratch)]
    timeout = None if deadline is None else max(deadline - time.monotonic(), 1.0)
    done = subprocess.run(
        command + settings_argv(settings), capture_output=True, text=True, check=False,
        timeout=timeout,
    )  # fmt: skip
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"the {method} worker failed (exit {done.returncode}):\n{tail}")


def _make_images(folder: Path, count: int = 4, side: int = 512) -> Path:
    """A few seeded 512 px images with shapes on a gradient (content does not change costs)."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        ramp = np.linspace(0, 255, side, dtype=np.float32)
        base = np.stack([ramp[None, :].repeat(side, 0), ramp[:, None].repeat(side, 1)], -1)
        pixels = np.concatenate([base, np.full((side, side, 1), 128.0, np.float32)], -1)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.integers(0, side - 64, 2)
            color = tuple(int(c) for c in rng.integers(0, 255, 3))
            draw.ellipse((int(x), int(y), int(x) + 96, int(y) + 96), fill=color)
        image.save(folder / f"image-{index}.png")
    return folder
