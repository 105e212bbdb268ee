"""The peers of ``textinv bench generate``: our pipeline and diffusers' over the same modules,
each a runner that records one request's end-to-end and per-stage times, run round-robin."""

from __future__ import annotations

import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from textinv.model import BaseModel
from textinv_client.choices import Scheduler
from textinv_server.pipeline import GenerationPipeline
from textinv_server.requests import GenerationRequest, GenerationResult

REFERENCE = "diffusers"  # the runner every ratio divides by


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
    """Every measured run of one runner."""

    e2e: list[float]
    text_encoder: list[float]
    unet_step: list[float]
    vae_decode: list[float]

    @classmethod
    def empty(cls) -> Samples:
        return cls([], [], [], [])

    def add(self, e2e: float, text: float, step: float, vae: float) -> None:
        self.e2e.append(e2e)
        self.text_encoder.append(text)
        self.unet_step.append(step)
        self.vae_decode.append(vae)

    def add_result(self, e2e: float, result: GenerationResult) -> None:
        """One run of our pipeline: its stages from the timings it reports itself."""
        t = result.timings
        self.add(e2e, t.text_encoder_ms, statistics.median(t.unet_step_ms), t.vae_decode_ms)

    def summary(self) -> dict[str, Stats]:
        return {
            "e2e": Stats.of(self.e2e),
            "text_encoder": Stats.of(self.text_encoder),
            "unet_step": Stats.of(self.unet_step),
            "vae_decode": Stats.of(self.vae_decode),
        }


Runner = Callable[[Samples], None]


def measure_runners(
    model: BaseModel,
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """Diffusers and each of our pipelines on ``request``; every row's ratios to diffusers."""
    runners = {REFERENCE: diffusers_runner(model, request)}
    runners.update({name: our_runner(p, request) for name, p in pipelines.items()})
    summaries = {n: s.summary() for n, s in round_robin(runners, warmup, repeats).items()}
    base = summaries[REFERENCE]
    rows: dict[str, Any] = {}
    for name, summary in summaries.items():
        rows[name] = {key: stats.to_dict() for key, stats in summary.items()}
        rows[name]["speedup_e2e"] = base["e2e"].median / summary["e2e"].median
        rows[name]["speedup_unet_step"] = base["unet_step"].median / summary["unet_step"].median
    return {"runners": rows}


def round_robin(runners: dict[str, Runner], warmup: int, repeats: int) -> dict[str, Samples]:
    """``warmup`` unmeasured rounds, then ``repeats`` measured ones, each runner once a round."""
    samples = {name: Samples.empty() for name in runners}
    for _ in range(warmup):
        for run in runners.values():
            run(Samples.empty())
    for _ in range(repeats):
        for name, run in runners.items():
            run(samples[name])
    return samples


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
    of ours), text encoder and VAE from timers around ``encode_prompt`` and ``vae.decode``."""
    pipeline = diffusers_pipeline(model, request.scheduler)
    assert request.seed is not None
    seed = request.seed

    def run(samples: Samples) -> None:
        marks: list[float] = []

        def on_step(_pipe: Any, _i: int, _t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            marks.append(time.perf_counter())
            return kwargs

        with _timed(pipeline, "encode_prompt") as text, _timed(pipeline.vae, "decode") as vae:
            start = time.perf_counter()
            pipeline(
                request.prompt,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                width=request.width,
                height=request.height,
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=on_step,
            )
            e2e = (time.perf_counter() - start) * 1000
        steps = [(b - a) * 1000 for a, b in itertools.pairwise(marks)]
        samples.add(e2e, sum(text), statistics.median(steps), sum(vae))

    return run


def diffusers_pipeline(model: BaseModel, scheduler_name: Scheduler) -> Any:
    """diffusers' pipeline over the very same modules (no second copy of the weights)."""
    from diffusers import StableDiffusionPipeline

    from textinv_server.schedulers import make_scheduler

    scheduler = make_scheduler(scheduler_name, model.scheduler_config, 1, torch.device("cpu"))
    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@contextlib.contextmanager
def _timed(owner: Any, method: str) -> Iterator[list[float]]:
    """Time every call of ``owner.method`` (milliseconds) while the block runs."""
    original = getattr(owner, method)
    times: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.append((time.perf_counter() - start) * 1000)

    setattr(owner, method, timed)
    try:
        yield times
    finally:
        delattr(owner, method)  # back to the class's method
