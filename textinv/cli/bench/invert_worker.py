"""One method of ``textinv bench invert`` in its own process: ``python -m`` this module.

It builds the model, times every optimizer step of one method (ours, or the reference in
``invert_reference``), and prints one ``BENCH_RESULT {json}`` line: the per-step times, their
median, and the process's resident memory after loading and at its peak.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from textinv.cli.bench.invert import (
    INIT,
    METHODS,
    RESULT_PREFIX,
    TOKEN,
    WORKER_MODULE,
    InvertBenchSettings,
    StepTimes,
)
from textinv.dtypes import precision_of, torch_dtype
from textinv.hardware import resolve_model_precision
from textinv.model import BaseModel
from textinv_client.choices import Precision
from textinv_client.flags import add_flags, from_flags


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {WORKER_MODULE}")
    parser.add_argument("--worker", choices=METHODS, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    add_flags(parser, InvertBenchSettings, required=["images"])
    args = parser.parse_args(argv)
    result = run_worker(args.worker, from_flags(InvertBenchSettings, args), args.scratch)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_worker(method: str, settings: InvertBenchSettings, scratch: Path) -> dict[str, Any]:
    """Load the model, time ``method``'s steps, and summarize them with the memory figures."""
    from textinv.cli.bench.invert_reference import train_reference

    if settings.threads:
        torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    model = load_model(settings, method)
    load_s = time.perf_counter() - started
    rss_after_load, build_peak = rss_mib(), peak_rss_mib()
    peak_reset = reset_peak_rss()  # from here the peak is training's, not building the model's
    cuda = settings.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if method == "textinv":
        times = train_textinv(settings, model, scratch)
    else:
        times = train_reference(settings, model)
    result = summarize(method, times, settings.warmup)
    result["precision"] = precision_of(model.unet.dtype).value  # what the UNet ran in
    result.update(load_s=load_s, rss_after_load_mib=rss_after_load, peak_rss_mib=peak_rss_mib())
    result.update(build_peak_rss_mib=build_peak, peak_rss_is_training_only=peak_reset)
    result["estimated_1000_steps_s"] = estimated_steps_s(result, 1000, settings.warmup)
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def load_model(settings: InvertBenchSettings, method: str) -> BaseModel:
    """Ours: every module in the precision, ``auto`` resolved as the trainer resolves it (our
    vectors are their own fp32 parameter). The reference: the text encoder in fp32 (its whole
    table trains), UNet and VAE in the precision, as diffusers' example casts them under
    ``--mixed_precision``; ``auto`` is the example's default, no mixed precision (fp32). SDXL's
    two text encoders are treated alike."""
    from textinv.model import load_base_model
    from textinv.testing import SHAPE_MODELS, load_benchmark_model

    precision = settings.precision
    if method == "reference" and precision is Precision.AUTO:
        precision = Precision.FP32
    dtype = torch.float32 if precision is Precision.AUTO else torch_dtype(precision)
    if settings.device == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 kernels are missing or slow on CPU (the trainer does this)
    whole = dtype if method == "textinv" else torch.float32
    model: BaseModel
    if settings.model in SHAPE_MODELS:
        model = load_benchmark_model(settings.model, dtype=whole)
        for module in model.modules:
            module.to(settings.device)
    else:
        model = load_base_model(settings.model, dtype=whole, device=settings.device)
    modules = [model.unet, model.vae]
    if method == "textinv" and precision is Precision.AUTO:
        dtype = torch_dtype(resolve_model_precision(precision, model.unet).precision)
        modules += [m for m in model.modules if m is not model.unet and m is not model.vae]
    for module in modules:
        module.to(dtype)
    return model


def train_textinv(settings: InvertBenchSettings, model: BaseModel, scratch: Path) -> StepTimes:
    """Our trainer as ``textinv invert`` runs it; each step's wall time from its own log."""
    from textinv.trainer import InvertConfig, iter_log, prepare

    assert settings.images is not None  # measure_invert always names the folder
    out = scratch / "out"
    config = InvertConfig(
        images=settings.images,
        token=TOKEN,
        init=INIT,
        out=str(out),
        model=settings.model,
        vectors=settings.vectors,
        steps=settings.warmup + settings.steps,
        batch_size=settings.batch_size,
        grad_accum=1,
        resolution=settings.resolution,
        checkpoint_every=0,
        seed=0,
        overwrite=True,
        device=settings.device,
        precision=settings.precision,
    )
    started = time.perf_counter()
    trainer = prepare(config, model)
    optimizer_step = trainer._optimizer_step
    cpu_s: list[float] = []

    def timed_step(should_stop: Callable[[], bool] | None = None) -> float | None:
        cpu_started = time.process_time()
        loss = optimizer_step(should_stop)
        cpu_s.append(time.process_time() - cpu_started)
        return loss

    trainer._optimizer_step = timed_step  # type: ignore[method-assign]
    trainer.train()
    total = time.perf_counter() - started
    seconds = [float(row["seconds"]) for row in iter_log(out)]
    return StepTimes(seconds, cpu_s, setup_s=total - sum(seconds))


def summarize(method: str, times: StepTimes, warmup: int) -> dict[str, Any]:
    """Medians over the timed steps (after ``warmup``), rates, and the machine's load."""
    timed = times.step_s[warmup:] or times.step_s
    median = statistics.median(timed)
    median_cpu = statistics.median(times.cpu_step_s[warmup:] or times.cpu_step_s)
    return {
        "method": method,
        "threads": torch.get_num_threads(),
        "step_s": [round(s, 4) for s in times.step_s],
        "median_step_s": median,
        "min_step_s": min(timed),
        "max_step_s": max(timed),
        "steps_per_s": 1.0 / median,
        "cpu_step_s": [round(s, 4) for s in times.cpu_step_s],
        "median_cpu_step_s": median_cpu,
        "steps_per_cpu_s": 1.0 / median_cpu,
        "load_average": load_average(),
        "setup_s": times.setup_s,
    }


def estimated_steps_s(result: dict[str, Any], steps: int, warmup: int) -> float:
    """An estimate, not a measurement: the measured load, setup and ``warmup`` steps (one-time
    costs such as our trainer's trace recording fall in its first step), plus the remaining
    ``steps`` at the steady median step (what a run of ``steps`` steps would take, checkpoints
    and evaluation aside)."""
    first = result["step_s"][:warmup]
    rest = max(0, steps - len(first))
    return float(result["load_s"] + result["setup_s"] + sum(first) + rest * result["median_step_s"])


def rss_mib() -> float:
    """Current resident memory (Linux /proc), MiB."""
    try:
        with open("/proc/self/statm") as stream:
            pages = int(stream.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def reset_peak_rss() -> bool:
    """Restart this process's peak resident memory (Linux's VmHWM) from its current size:
    building a model in fp32 and casting it can peak above what training ever holds."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """The peak resident memory since the process started or ``reset_peak_rss`` (Linux's
    VmHWM), MiB; elsewhere ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (Linux /proc), or [] elsewhere."""
    try:
        with open("/proc/loadavg") as stream:
            return [float(x) for x in stream.read().split()[:3]]
    except (OSError, ValueError):
        return []


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
