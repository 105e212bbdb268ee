"""The peers of ``textinv bench generate``: our pipeline and diffusers' over the same modules,
each a runner that times one request end to end and per stage (images, memory), round-robin.

What a row holds besides the stage times (per runner, at one ``num_images``):

- ``status``: "ok", or "failed" with ``error``, ``traceback`` (its last frames) and
  ``failed_in_round``: a runner that raises (inductor without a C compiler, a CUDA graph
  capture error) sits out the later rounds; the others' rows stay. Without diffusers' row the
  ratios (``speedup_*``) are ``None``;
- ``first_run_ms`` and ``warmup_cost_ms``: the first run's end-to-end time (compilation and a
  CUDA graph's capture land here) and how much longer it took than the steady median;
- ``peak_cuda_mib``: ``torch.cuda.max_memory_allocated`` over its runs, warm-up included, and
  ``peak_cuda_above_start_mib``: the most a run allocated beyond what was allocated when it
  began; torch's caching allocator only (not TensorRT's engine and context memory, nor
  onnxruntime's arena), and other runners' resident tensors (a CUDA graph's) count too;
- ``device_used_mib``: the whole GPU's used memory (total - free, ``torch.cuda.mem_get_info``,
  every allocator and process), the most of samples before and after each run: coarse, it
  misses peaks inside a run. Every memory figure is ``None`` off CUDA;
- ``max_pixel_diff_vs_torch`` / ``vs_diffusers`` (and the mean): its last images against our
  eager runner's and diffusers' for the same seeds, uint8 levels, after the whole trajectory;
- ``unet_call_relative_error_vs_eager`` (``UNET_CHECK``), our torch runners only, else
  ``None``: the UNet as that runner calls it (compiled, CUDA-graphed) on one fixed seeded
  input against the same module called eagerly: max |got - eager| / max |eager|.
"""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from textinv.cli.bench.generate_checks import UNET_CHECK, unet_call_checks
from textinv.model import BaseModel
from textinv.sdxl_text import SdxlConcepts
from textinv_client.choices import Scheduler
from textinv_server.pipeline import GenerationPipeline
from textinv_server.pipeline.decoding import decode_png
from textinv_server.pipeline.planning import Concepts
from textinv_server.requests import GenerationRequest, GenerationResult

REFERENCE = "diffusers"  # the runner every ratio divides by
# diffusers again in ours' precision, when ``auto`` moved ours off fp32: the same-precision ratio
DIFFUSERS_SAME = "diffusers-same-precision"
OPTIMUM = "optimum-ort"  # optimum-onnx's ORTStableDiffusionPipeline, in its own venv
PEERS = (REFERENCE, DIFFUSERS_SAME, OPTIMUM)  # the runners that are not ours
EAGER = "torch"  # our eager runner, the other reference for pixel differences
STAGES = ("e2e", "text_encoder", "unet_step", "vae_decode")  # each a list in Samples
MEMORY = ("peak_cuda_mib", "peak_cuda_above_start_mib", "device_used_mib")  # None off CUDA
ERROR_CHARS, TRACEBACK_FRAMES, TRACEBACK_CHARS = 1000, 6, 4000  # what a failed row keeps


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
    """Every run of one runner: stage and warm-up times, memory, last images, what stopped it."""

    e2e: list[float]
    text_encoder: list[float]
    unet_step: list[float]
    vae_decode: list[float]
    warmup_e2e: list[float] = field(default_factory=list)  # unmeasured runs, in order
    warming: bool = False  # runs now go to warmup_e2e only
    peak_cuda_mib: float | None = None
    peak_cuda_above_start_mib: float | None = None
    device_used_mib: float | None = None
    images: np.ndarray | None = None  # the latest run's uint8 [n, H, W, 3]
    error: dict[str, Any] | None = None  # error, traceback, failed_in_round

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

    def add_peak(self, peak_mib: float, above_start_mib: float, device_used_mib: float) -> None:
        self.peak_cuda_mib = max(self.peak_cuda_mib or 0.0, peak_mib)
        self.peak_cuda_above_start_mib = max(self.peak_cuda_above_start_mib or 0.0, above_start_mib)
        self.device_used_mib = max(self.device_used_mib or 0.0, device_used_mib)

    def fail(self, error: Exception, round_index: int) -> None:
        """The runner stopped in round ``round_index`` (warm-up rounds first)."""
        trace = "".join(traceback.format_exception(error, limit=-TRACEBACK_FRAMES))
        self.error = {
            "error": f"{type(error).__name__}: {error}"[:ERROR_CHARS],
            "traceback": trace[-TRACEBACK_CHARS:],  # the end: the exception raised last
            "failed_in_round": round_index,
        }
        self.images = None  # pixel differences only between runners that finished

    def summary(self) -> dict[str, Stats]:
        return {stage: Stats.of(getattr(self, stage)) for stage in STAGES}

    def row(self, base: dict[str, Stats] | None) -> dict[str, Any]:
        """The report's row: stage stats, ratios to ``base`` (diffusers'; None: ratios None),
        warm-up and memory; or a failed runner's error."""
        memory = {key: getattr(self, key) for key in MEMORY}
        if self.error is not None:
            return {"status": "failed", **self.error, **memory}
        summary = self.summary()
        first = (self.warmup_e2e + self.e2e)[0]

        def ratio(stage: str) -> float | None:
            return None if base is None else base[stage].median / summary[stage].median

        return {
            "status": "ok",
            **{key: stats.to_dict() for key, stats in summary.items()},
            "speedup_e2e": ratio("e2e"),
            "speedup_unet_step": ratio("unet_step"),
            "first_run_ms": first,
            "warmup_cost_ms": first - summary["e2e"].median,
            **memory,
        }


Runner = Callable[[Samples], None]


def measure_runners(
    model: BaseModel,
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
    device: torch.device | None = None,
    peers: dict[str, BaseModel] | None = None,
    extra: dict[str, Runner] | None = None,
    same_precision: set[str] | None = None,
) -> dict[str, Any]:
    """Diffusers (on each of ``peers``' models by runner name; default ``model`` as
    ``REFERENCE``), ``extra`` runners (optimum's) and each of our pipelines on ``request``, a
    row each (module docstring); memory on a CUDA ``device``; a runner that raised has its
    error as its row. ``same_precision``: our runners in ``DIFFUSERS_SAME``'s precision."""
    peers = peers or {REFERENCE: model}
    runners = {name: diffusers_runner(peer, request) for name, peer in peers.items()}
    runners.update(extra or {})
    runners.update({name: our_runner(p, request) for name, p in pipelines.items()})
    samples = round_robin(runners, warmup, repeats, device)
    rows = runner_rows(samples)
    same_precision_ratios(rows, same_precision or set())
    finished = {name: p for name, p in pipelines.items() if samples[name].error is None}
    for name, check in unet_call_checks(model, finished, request).items():
        rows[name].update(check)
    return {"num_images": request.num_images, "runners": rows}


def runner_rows(samples: dict[str, Samples]) -> dict[str, dict[str, Any]]:
    """Each runner's row: ratios to diffusers' (None where it failed or is missing) and pixel
    differences; ``UNET_CHECK`` None until ``unet_call_checks`` fills it in."""
    reference = samples.get(REFERENCE)
    base = None if reference is None or reference.error else reference.summary()
    rows = {name: each.row(base) for name, each in samples.items()}
    for name, row in rows.items():
        if row["status"] == "ok":
            row.update(pixel_differences(samples, name), **{UNET_CHECK: None})
    return rows


def same_precision_ratios(rows: dict[str, dict[str, Any]], names: set[str]) -> None:
    """Add to each row of ``names`` (our runners in the precision ``DIFFUSERS_SAME`` ran in) its
    end-to-end and per-step ratios to that runner; None where it did not run."""
    same = rows.get(DIFFUSERS_SAME) or {"status": "missing"}
    for name in names:
        row = rows.get(name)
        if row is None or row["status"] != "ok":
            continue
        for stage in ("e2e", "unet_step"):
            ratio = None
            if same["status"] == "ok":
                ratio = same[stage]["median_ms"] / row[stage]["median_ms"]
            row[f"speedup_{stage}_same_precision"] = ratio


def round_robin(
    runners: dict[str, Runner], warmup: int, repeats: int, device: torch.device | None = None
) -> dict[str, Samples]:
    """``warmup`` unmeasured rounds, then ``repeats`` measured ones, each runner once a round;
    each run's memory too where ``device`` is a CUDA device. A runner that raises has the error
    in its samples and sits out the later rounds; the others go on."""
    samples = {name: Samples.empty() for name in runners}
    active = dict(runners)
    for round_index in range(warmup + repeats):
        for name, run in list(active.items()):
            samples[name].warming = round_index < warmup
            try:
                with peak_memory(device, samples[name]):
                    run(samples[name])
            except Exception as error:  # recorded in its row (KeyboardInterrupt goes on)
                samples[name].fail(error, round_index)
                del active[name]
    for each in samples.values():
        each.warming = False
    return samples


@contextlib.contextmanager
def peak_memory(device: torch.device | None, samples: Samples) -> Iterator[None]:
    """Record in ``samples`` the block's peak allocated CUDA memory (torch's allocator) and
    the device-wide used memory before and after it (nothing off CUDA)."""
    if device is None or device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    used_before = device_used_mib(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    used = max(used_before, device_used_mib(device))
    samples.add_peak(peak / 2**20, (peak - start) / 2**20, used)


def device_used_mib(device: torch.device) -> float:
    free, total = torch.cuda.mem_get_info(device)  # the whole GPU's, every process's
    return (total - free) / 2**20


def pixel_differences(samples: dict[str, Samples], name: str) -> dict[str, float | int | None]:
    """``name``'s last images against our eager runner's and diffusers' (uint8 levels; None
    where that runner is missing, failed or has no images)."""
    out: dict[str, float | int | None] = {}
    mine = samples[name].images
    for other in (EAGER, REFERENCE):
        theirs = samples[other].images if other in samples else None
        pair = None if mine is None or theirs is None else image_difference(mine, theirs)
        out[f"max_pixel_diff_vs_{other}"], out[f"mean_pixel_diff_vs_{other}"] = pair or (None, None)
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
    concepts: Concepts | SdxlConcepts | None = None,
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
    """diffusers' pipeline over the very same modules (no second copy of the weights):
    ``StableDiffusionXLPipeline`` for SDXL, else ``StableDiffusionPipeline``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from textinv_server.schedulers import make_scheduler

    def scheduler() -> Any:
        return make_scheduler(scheduler_name, model.scheduler_config, 1, torch.device("cpu"))

    common = {"vae": model.vae, "text_encoder": model.text_encoder, "tokenizer": model.tokenizer}
    pipeline: Any
    if model.is_sdxl:
        pipeline = StableDiffusionXLPipeline(
            **common,
            text_encoder_2=model.text_encoder_2,
            tokenizer_2=model.tokenizer_2,
            unet=model.unet,
            scheduler=scheduler(),
            force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt,
        )
    else:
        pipeline = StableDiffusionPipeline(
            **common,
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
