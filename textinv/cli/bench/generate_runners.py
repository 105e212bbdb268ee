"""The peers of ``textinv bench generate``: our pipeline and diffusers' over the same modules,
each a runner that records one request's end-to-end and per-stage times, its images and its peak
CUDA memory, run round-robin.

What a row holds besides the stage times (per runner, at one ``num_images``):

- ``first_run_ms`` and ``warmup_cost_ms``: the first run's end-to-end time (warm-up included,
  so ``torch.compile``'s compilation and a CUDA graph's capture land here) and how much longer
  it took than the steady median;
- ``peak_cuda_mib``: ``torch.cuda.max_memory_allocated`` over its runs, warm-up included, and
  ``peak_cuda_above_start_mib``: the most a run allocated beyond what was allocated when it
  began. All runners share one copy of the weights, and the absolute figure also counts what
  other runners keep resident (a CUDA graph's static tensors); ``None`` off CUDA;
- ``max_pixel_diff_vs_torch`` / ``vs_diffusers`` (and the mean): its last images against our
  eager runner's and diffusers' for the same seeds, uint8 levels (a correctness check).
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from textinv.model import BaseModel
from textinv_client.choices import Scheduler
from textinv_server.pipeline import GenerationPipeline
from textinv_server.pipeline.decoding import decode_png
from textinv_server.requests import GenerationRequest, GenerationResult

REFERENCE = "diffusers"  # the runner every ratio divides by
EAGER = "torch"  # our eager runner, the other reference for pixel differences


@dataclass(frozen=True)
class Stats:
    """Median and spread of one quantity, in milliseconds."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        return cls(statistics.median(values), min(values), max(values))

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median, "min_ms": self.low, "max_ms": self.high}


@dataclass
class Samples:
    """Every run of one runner: measured stage times, warm-up times, memory, the last images."""

    e2e: list[float]
    text_encoder: list[float]
    unet_step: list[float]
    vae_decode: list[float]
    warmup_e2e: list[float] = field(default_factory=list)  # unmeasured runs, in order
    warming: bool = False  # runs now go to warmup_e2e only
    peak_cuda_mib: float | None = None
    peak_cuda_above_start_mib: float | None = None
    images: np.ndarray | None = None  # the latest run's uint8 [n, H, W, 3]

    @classmethod
    def empty(cls) -> Samples:
        return cls([], [], [], [])

    def add(self, e2e: float, text: float, step: float, vae: float) -> None:
        if self.warming:
            self.warmup_e2e.append(e2e)
            return
        self.e2e.append(e2e)
        self.text_encoder.append(text)
        self.unet_step.append(step)
        self.vae_decode.append(vae)

    def add_result(self, e2e: float, result: GenerationResult) -> None:
        """One run of our pipeline: its stages from the timings it reports itself."""
        t = result.timings
        self.add(e2e, t.text_encoder_ms, statistics.median(t.unet_step_ms), t.vae_decode_ms)
        self.images = np.stack([decode_png(png) for png in result.images])

    def add_peak(self, peak_mib: float, above_start_mib: float) -> None:
        self.peak_cuda_mib = max(self.peak_cuda_mib or 0.0, peak_mib)
        self.peak_cuda_above_start_mib = max(self.peak_cuda_above_start_mib or 0.0, above_start_mib)

    def summary(self) -> dict[str, Stats]:
        return {
            "e2e": Stats.of(self.e2e),
            "text_encoder": Stats.of(self.text_encoder),
            "unet_step": Stats.of(self.unet_step),
            "vae_decode": Stats.of(self.vae_decode),
        }

    def row(self, base: dict[str, Stats]) -> dict[str, Any]:
        """The report's row: stage stats, ratios to ``base`` (diffusers'), warm-up and memory."""
        summary = self.summary()
        first = (self.warmup_e2e + self.e2e)[0]
        return {
            **{key: stats.to_dict() for key, stats in summary.items()},
            "speedup_e2e": base["e2e"].median / summary["e2e"].median,
            "speedup_unet_step": base["unet_step"].median / summary["unet_step"].median,
            "first_run_ms": first,
            "warmup_cost_ms": first - summary["e2e"].median,
            "peak_cuda_mib": self.peak_cuda_mib,
            "peak_cuda_above_start_mib": self.peak_cuda_above_start_mib,
        }


Runner = Callable[[Samples], None]


def measure_runners(
    model: BaseModel,
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Diffusers and each of our pipelines on ``request``: every row's ratios to diffusers, its
    warm-up cost, peak memory (on a CUDA ``device``) and pixel differences."""
    runners = {REFERENCE: diffusers_runner(model, request)}
    runners.update({name: our_runner(p, request) for name, p in pipelines.items()})
    samples = round_robin(runners, warmup, repeats, device)
    base = samples[REFERENCE].summary()
    rows = {name: s.row(base) for name, s in samples.items()}
    for name, row in rows.items():
        row.update(pixel_differences(samples, name))
    return {"num_images": request.num_images, "runners": rows}


def round_robin(
    runners: dict[str, Runner], warmup: int, repeats: int, device: torch.device | None = None
) -> dict[str, Samples]:
    """``warmup`` unmeasured rounds, then ``repeats`` measured ones, each runner once a round;
    each run's peak memory too where ``device`` is a CUDA device."""
    samples = {name: Samples.empty() for name in runners}
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            samples[name].warming = round_index < warmup
            with peak_memory(device, samples[name]):
                run(samples[name])
    for each in samples.values():
        each.warming = False
    return samples


@contextlib.contextmanager
def peak_memory(device: torch.device | None, samples: Samples) -> Iterator[None]:
    """Record the block's peak allocated CUDA memory in ``samples`` (nothing off CUDA)."""
    if device is None or device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    samples.add_peak(peak / 2**20, (peak - start) / 2**20)


def pixel_differences(samples: dict[str, Samples], name: str) -> dict[str, float | int | None]:
    """``name``'s last images against our eager runner's and diffusers' (uint8 levels; None
    where that runner is missing or has no images)."""
    out: dict[str, float | int | None] = {}
    mine = samples[name].images
    for other in (EAGER, REFERENCE):
        theirs = samples[other].images if other in samples else None
        if mine is None or theirs is None:
            out[f"max_pixel_diff_vs_{other}"] = out[f"mean_pixel_diff_vs_{other}"] = None
            continue
        largest, mean = image_difference(mine, theirs)
        out[f"max_pixel_diff_vs_{other}"] = largest
        out[f"mean_pixel_diff_vs_{other}"] = mean
    return out


def image_difference(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """The largest and the mean absolute difference of two ``uint8 [n, H, W, 3]`` batches."""
    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {a.shape} vs {b.shape}")
    difference = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(difference.max()), float(difference.mean())


def our_runner(
    pipeline: GenerationPipeline,
    request: GenerationRequest,
    concepts: dict[str, torch.Tensor] | None = None,
) -> Runner:
    def run(samples: Samples) -> None:
        start = time.perf_counter()
        result = pipeline(request) if concepts is None else pipeline(request, concepts)
        samples.add_result((time.perf_counter() - start) * 1000, result)

    return run


def diffusers_runner(model: BaseModel, request: GenerationRequest) -> Runner:
    """diffusers end to end; per step from step-end callbacks (UNet + scheduler step, the scope
    of ours; the first from the end of ``prepare_latents``), text encoder and VAE from timers
    around ``encode_prompt`` and ``vae.decode``.
    Image i is drawn from its own generator seeded seed + i, as ours is."""
    pipeline = diffusers_pipeline(model, request.scheduler)
    seeds = request.seeds  # the bench's request always has its seed

    def run(samples: Samples) -> None:
        marks: list[float] = []

        def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            marks.append(time.perf_counter())
            return kwargs

        with (
            _timed(pipeline, "encode_prompt") as text,
            _timed(pipeline, "prepare_latents", marks),  # the first step's start
            _timed(pipeline.vae, "decode") as vae,
        ):
            start = time.perf_counter()
            output = pipeline(
                request.prompt,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                num_images_per_prompt=request.num_images,
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                callback_on_step_end=on_step,
            )
            e2e = (time.perf_counter() - start) * 1000
        steps = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
        samples.add(e2e, sum(text), statistics.median(steps), sum(vae))
        samples.images = np.stack([np.asarray(image.convert("RGB")) for image in output.images])

    return run


def diffusers_pipeline(model: BaseModel, scheduler_name: Scheduler) -> Any:
    """diffusers' pipeline over the very same modules (no second copy of the weights)."""
    from diffusers import StableDiffusionPipeline

    from textinv_server.schedulers import make_scheduler

    def scheduler() -> Any:
        return make_scheduler(scheduler_name, model.scheduler_config, 1, torch.device("cpu"))

    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # A fresh one after construction: the constructor rewrites the config of the one it gets
    # to clip_sample=False where the model's config does not name it (a deprecation fix-up),
    # and diffusers would then run another scheduler than ours.
    pipeline.scheduler = scheduler()
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@contextlib.contextmanager
def _timed(owner: Any, method: str, ends: list[float] | None = None) -> Iterator[list[float]]:
    """Time every call of ``owner.method`` (milliseconds) while the block runs; ``ends`` gets
    the clock at each call's end."""
    original = getattr(owner, method)
    times: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            end = time.perf_counter()
            times.append((end - start) * 1000)
            if ends is not None:
                ends.append(end)

    setattr(owner, method, timed)
    try:
        yield times
    finally:
        delattr(owner, method)  # back to the class's method
