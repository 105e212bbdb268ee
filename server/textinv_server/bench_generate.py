"""``textinv bench generate``: our pipeline per backend against diffusers, in one run.

For each available backend (torch always; onnxruntime on ``--engines``, or on an export made
here into a temporary folder; tensorrt where CUDA and engines exist) and for diffusers'
``StableDiffusionPipeline`` built from the same modules, it runs the same request (model,
scheduler, steps, size, seed) ``--warmup`` times unmeasured, then ``--repeats`` times,
round-robin across the runners so a noisy neighbour hurts all of them alike. It reports the
median and spread (min-max) of end-to-end latency and of each stage, and ratios to diffusers.

Concepts: the same request with 0 and with 3 concepts (K = 2 each) on the fastest backend, end to
end, plus the host-side prompt work alone (where the concepts' whole cost lives). Adding a
concept to a running pipeline: parse and check a concept file's bytes and publish its vectors,
then the next request uses it with the same backend sessions (no re-export, no reload).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from textinv.concepts import Concept, concept_to_bytes, parse_concept
from textinv.model import BaseModel
from textinv_server.backends import BackendName, BackendOptions, TorchOptions, WeightDtype
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline
from textinv_server.requests import GenerationRequest, GenerationResult, Scheduler

PROMPT_PLAIN = "a photo of a toy with a cat in red style"
PROMPT_CONCEPTS = "a photo of <c0> with <c1> in <c2> style"
CONCEPT_VECTORS = 2


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

    def summary(self) -> dict[str, Stats]:
        return {
            "e2e": Stats.of(self.e2e),
            "text_encoder": Stats.of(self.text_encoder),
            "unet_step": Stats.of(self.unet_step),
            "vae_decode": Stats.of(self.vae_decode),
        }


Runner = Callable[[Samples], None]


@dataclass(frozen=True)
class TorchVariant:
    """One way of running the torch backend, measured as its own runner (``torch-compile``)."""

    label: str
    options: TorchOptions = field(default_factory=TorchOptions)


# The variants ``--torch-variants`` names; "torch" alone is eager with the model as loaded.
VARIANTS = {
    "eager": TorchVariant("torch"),
    "compile": TorchVariant("torch-compile", TorchOptions(compile=True)),
    "cuda-graph": TorchVariant("torch-cudagraph", TorchOptions(cuda_graph=True)),
}


@dataclass(frozen=True)
class GenerateBenchSettings:
    """One ``bench generate`` run: every runner gets the same request."""

    model: str | None  # a model folder, sd15-shape, or None: the embedded model
    engines: Path | None = None
    backends: tuple[str, ...] | None = None  # None: every one available
    steps: int = 10
    resolution: int | None = None  # None: the model's native size
    scheduler: str = Scheduler.DDIM.value
    guidance: float = 7.5
    seed: int = 0
    warmup: int = 1
    repeats: int = 5
    threads: int = 0
    device: str = "cpu"
    # Weights for every runner, diffusers included (None: as loaded, fp32).
    weights: WeightDtype | None = None
    channels_last: bool = False  # the UNet's layout, for every runner
    torch_variants: tuple[TorchVariant, ...] = field(default=(VARIANTS["eager"],))
    concepts: bool = True  # also measure the concepts' costs

    def __post_init__(self) -> None:
        for name in ("steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be ≥ 0, got {self.warmup}")


def add_generate_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "generate", help="generation latency per backend against diffusers' pipeline"
    )
    bench.add_argument("--model", help="a model folder, or sd15-shape (default: embedded)")
    bench.add_argument("--engines", type=Path, help="an export folder for onnxruntime/tensorrt")
    bench.add_argument(
        "--backends",
        nargs="+",
        choices=[b.value for b in BackendName],
        default=None,
        help="which backends (default: every one available)",
    )
    bench.add_argument("--steps", type=int, default=10, help="denoising steps (10)")
    bench.add_argument("--resolution", type=int, default=None, help="image side (native)")
    bench.add_argument(
        "--scheduler", choices=[s.value for s in Scheduler], default=Scheduler.DDIM.value
    )
    bench.add_argument("--guidance", type=float, default=7.5)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--warmup", type=int, default=1, help="unmeasured runs per runner (1)")
    bench.add_argument("--repeats", type=int, default=5, help="measured runs per runner (5)")
    bench.add_argument("--threads", type=int, default=0, help="CPU threads (library default)")
    bench.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    bench.add_argument(
        "--weights", choices=[w.value for w in WeightDtype], default=None, help="every runner's"
    )
    bench.add_argument("--channels-last", action="store_true", help="the UNet's layout (all)")
    bench.add_argument(
        "--torch-variants",
        default="eager",
        help=f"comma-separated torch runners: {', '.join(VARIANTS)} (eager)",
    )
    bench.add_argument("--json", type=Path, default=None, metavar="OUT", help="write JSON here")
    bench.set_defaults(func=run_generate_bench)


def settings_from_args(args: argparse.Namespace) -> GenerateBenchSettings:
    return GenerateBenchSettings(
        model=args.model,
        engines=args.engines,
        backends=tuple(args.backends) if args.backends else None,
        steps=args.steps,
        resolution=args.resolution,
        scheduler=args.scheduler,
        guidance=args.guidance,
        seed=args.seed,
        warmup=args.warmup,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        weights=WeightDtype.parse(args.weights) if args.weights else None,
        channels_last=args.channels_last,
        torch_variants=parse_variants(args.torch_variants),
    )


def parse_variants(text: str) -> tuple[TorchVariant, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"--torch-variants {text!r}: choose from {', '.join(VARIANTS)}")
    return tuple(VARIANTS[name] for name in names)


def run_generate_bench(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    report = measure_generate(settings)
    s = report["settings"]
    print(
        f"generate bench: {s['model']}, {s['resolution']}×{s['resolution']} px, {s['steps']} "
        f"steps ({s['scheduler']}), guidance {s['guidance']}, seed {s['seed']}, "
        f"torch threads {s['torch_threads']}, {s['warmup']} warm-up + {s['repeats']} runs, "
        f"{s['device']}, weights {s['weights']}"
    )
    for note in report["notes"]:
        print(note)
    _print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def measure_generate(
    settings: GenerateBenchSettings, model: BaseModel | None = None
) -> dict[str, Any]:
    """Every runner against diffusers, round-robin, as plain data (``model`` reuses one)."""
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    model = model or _load_model(settings.model)
    _place(model, settings)
    side = settings.resolution or model.default_resolution
    request = GenerationRequest(
        PROMPT_PLAIN,
        steps=settings.steps,
        guidance_scale=settings.guidance,
        seed=settings.seed,
        width=side,
        height=side,
        scheduler=Scheduler.parse(settings.scheduler),
    )
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="textinv-bench-generate-") as scratch:
        pipelines = _pipelines(model, settings, side, Path(scratch), notes)
        report = _measure(model, pipelines, request, settings.warmup, settings.repeats)
        if settings.concepts:
            report["concepts"] = _concept_costs(
                pipelines, request, settings.warmup, settings.repeats
            )
    report["notes"] = notes
    report["settings"] = {
        "model": settings.model,
        "resolution": side,
        "steps": settings.steps,
        "scheduler": settings.scheduler,
        "guidance": settings.guidance,
        "seed": settings.seed,
        "torch_threads": torch.get_num_threads(),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "device": settings.device,
        "weights": settings.weights.value if settings.weights else str(model.unet.dtype),
        "channels_last": settings.channels_last,
        "torch_variants": [v.label for v in settings.torch_variants],
    }
    return report


# -- setting up ----------------------------------------------------------------------------------


def _load_model(name: str | None) -> BaseModel:
    from textinv.testing import load_benchmark_model

    model: BaseModel = load_benchmark_model(name)
    return model


def _place(model: BaseModel, settings: GenerateBenchSettings) -> None:
    """Device, weights and layout for every runner alike (diffusers shares these modules)."""
    for module in (model.text_encoder, model.unet, model.vae):
        module.to(settings.device)
        if settings.weights is not None:
            module.to(settings.weights.torch_dtype)
    if settings.channels_last:
        model.unet.to(memory_format=torch.channels_last)


def _pipelines(
    model: BaseModel, settings: GenerateBenchSettings, side: int, scratch: Path, notes: list[str]
) -> dict[str, GenerationPipeline]:
    """Our pipeline per requested and available backend (and torch variant), keyed by label."""
    wanted = [BackendName(b) for b in settings.backends] if settings.backends else list(BackendName)
    pipelines: dict[str, GenerationPipeline] = {}
    for name in wanted:
        engines = settings.engines
        if name is BackendName.ONNXRUNTIME and engines is None:
            engines = _export_here(model, side, scratch, notes)
        if name is BackendName.TENSORRT and not _tensorrt_usable(engines):
            notes.append(
                "tensorrt: skipped (needs CUDA, the tensorrt package and --engines with engines)"
            )
            continue
        options = BackendOptions(engines=engines, threads=settings.threads, device=settings.device)
        if name is not BackendName.TORCH:
            pipelines[name.value] = load_generation_pipeline(model, name, options)
            continue
        for variant in settings.torch_variants:
            if variant.options.cuda_graph and not settings.device.startswith("cuda"):
                notes.append(f"{variant.label}: skipped (CUDA graphs need a CUDA device)")
                continue
            with_variant = replace(options, torch_options=variant.options)
            pipelines[variant.label] = load_generation_pipeline(model, name, with_variant)
    return pipelines


def _export_here(model: BaseModel, side: int, scratch: Path, notes: list[str]) -> Path:
    from textinv_export.exporter import ExportConfig, export_model
    from textinv_export.specs import Component, Range, ShapeRanges

    start = time.perf_counter()
    config = ExportConfig(
        scratch / "engines",
        ranges=ShapeRanges(Range(1, 1, 4), Range(side, side, side)),
        components=(Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER),
    )
    export_model(model, config, progress=lambda _: None)
    notes.append(f"onnxruntime: exported here in {time.perf_counter() - start:.1f} s (fp32)")
    return config.out


def _tensorrt_usable(engines: Path | None) -> bool:
    from textinv_export.tensorrt import tensorrt_missing

    if engines is None or tensorrt_missing() is not None:
        return False
    from textinv_export.manifest import read_manifest

    return all(e.engine is not None for e in read_manifest(engines).components.values())


def _diffusers_pipeline(model: BaseModel, scheduler_name: Scheduler) -> Any:
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


# -- measuring -----------------------------------------------------------------------------------


def _ours(pipeline: GenerationPipeline, request: GenerationRequest) -> Runner:
    def run(samples: Samples) -> None:
        start = time.perf_counter()
        result = pipeline(request)
        e2e = (time.perf_counter() - start) * 1000
        _add_result(samples, e2e, result)

    return run


def _add_result(samples: Samples, e2e: float, result: GenerationResult) -> None:
    t = result.timings
    samples.add(e2e, t.text_encoder_ms, statistics.median(t.unet_step_ms), t.vae_decode_ms)


def _reference(model: BaseModel, request: GenerationRequest) -> Runner:
    """diffusers end to end; per step from step-end callbacks (UNet + scheduler step, the scope
    of ours), text encoder and VAE from timers around ``encode_prompt`` and ``vae.decode``."""
    pipeline = _diffusers_pipeline(model, request.scheduler)
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


def _round_robin(runners: dict[str, Runner], warmup: int, repeats: int) -> dict[str, Samples]:
    samples = {name: Samples.empty() for name in runners}
    for _ in range(warmup):
        for run in runners.values():
            run(Samples.empty())
    for _ in range(repeats):
        for name, run in runners.items():
            run(samples[name])
    return samples


def _measure(
    model: BaseModel,
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    runners = {"diffusers": _reference(model, request)}
    runners.update({name: _ours(p, request) for name, p in pipelines.items()})
    summaries = {n: s.summary() for n, s in _round_robin(runners, warmup, repeats).items()}
    base = summaries["diffusers"]
    rows: dict[str, Any] = {}
    for name, summary in summaries.items():
        rows[name] = {key: stats.to_dict() for key, stats in summary.items()}
        rows[name]["speedup_e2e"] = base["e2e"].median / summary["e2e"].median
        rows[name]["speedup_unet_step"] = base["unet_step"].median / summary["unet_step"].median
    return {"runners": rows}


def _concept_costs(
    pipelines: dict[str, GenerationPipeline],
    request: GenerationRequest,
    warmup: int,
    repeats: int,
) -> dict[str, Any]:
    """0 vs 3 concepts end to end and in host-side prompt work; adding one to a live table."""
    name = BackendName.ONNXRUNTIME.value if "onnxruntime" in pipelines else next(iter(pipelines))
    pipeline = pipelines[name]
    width = pipeline.host.text_width
    generator = torch.Generator().manual_seed(1)
    table: dict[str, torch.Tensor] = {
        f"<c{i}>": torch.randn(CONCEPT_VECTORS, width, generator=generator) for i in range(3)
    }
    with_concepts = replace(request, prompt=PROMPT_CONCEPTS)

    def run_with(req: GenerationRequest, concepts: dict[str, torch.Tensor]) -> Runner:
        def run(samples: Samples) -> None:
            start = time.perf_counter()
            result = pipeline(req, concepts)
            _add_result(samples, (time.perf_counter() - start) * 1000, result)

        return run

    samples = _round_robin(
        {"0": run_with(request, {}), "3": run_with(with_concepts, table)}, warmup, repeats
    )
    e2e_0, e2e_3 = (Stats.of(samples[k].e2e).median for k in ("0", "3"))
    prepare_0 = _median_ms(lambda: pipeline.prepare(request, {}), 200)
    prepare_3 = _median_ms(lambda: pipeline.prepare(with_concepts, table), 200)
    return {
        "backend": name,
        "e2e_0_concepts_ms": e2e_0,
        "e2e_3_concepts_ms": e2e_3,
        "e2e_overhead_pct": 100 * (e2e_3 - e2e_0) / e2e_0,
        "prompt_prepare_0_concepts_ms": prepare_0,
        "prompt_prepare_3_concepts_ms": prepare_3,
        "prepare_overhead_pct_of_e2e": 100 * (prepare_3 - prepare_0) / e2e_0,
        **_add_concept_cost(pipeline, request, table),
    }


def _add_concept_cost(
    pipeline: GenerationPipeline, request: GenerationRequest, table: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """Parse + check a concept file's bytes and publish it in the live table; then use it."""
    width = pipeline.host.text_width
    vectors = torch.randn(CONCEPT_VECTORS, width, generator=torch.Generator().manual_seed(2))
    data = concept_to_bytes(Concept("<new>", vectors))
    backend_before = id(pipeline.backend)

    def add() -> None:
        concept = parse_concept(data, "new.safetensors", expected_width=width)
        table[concept.token] = concept.vectors

    add_ms = _median_ms(add, 200)
    del table["<new>"]
    start = time.perf_counter()
    add()
    first_use = pipeline(replace(request, prompt="a <new> toy"), table)
    first_use_ms = (time.perf_counter() - start) * 1000
    return {
        "add_concept_ms": add_ms,
        "first_request_with_new_concept_ms": first_use_ms,
        "first_request_images": len(first_use.images),
        "backend_reloaded": id(pipeline.backend) != backend_before,
    }


def _median_ms(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# -- printing ------------------------------------------------------------------------------------


def _print_report(report: dict[str, Any]) -> None:
    print(
        f"{'runner':<12} {'e2e ms median (min-max)':>28} {'text enc':>9} {'unet/step':>10} "
        f"{'vae':>9} {'e2e ×':>6} {'step ×':>7}"
    )
    for name, row in report["runners"].items():
        text = row["text_encoder"]["median_ms"]
        print(
            f"{name:<12} {_stats(row['e2e']):>28} "
            f"{text:>9.1f} "
            f"{row['unet_step']['median_ms']:>10.1f} {row['vae_decode']['median_ms']:>9.1f} "
            f"{row['speedup_e2e']:>6.2f} {row['speedup_unet_step']:>7.2f}"
        )
    c = report.get("concepts")
    if c is None:
        return
    print(
        f"concepts on {c['backend']}: e2e {c['e2e_0_concepts_ms']:.1f} ms with 0, "
        f"{c['e2e_3_concepts_ms']:.1f} ms with 3 ({c['e2e_overhead_pct']:+.2f}%, noise included); "
        f"prompt work {c['prompt_prepare_0_concepts_ms']:.3f} → "
        f"{c['prompt_prepare_3_concepts_ms']:.3f} ms ({c['prepare_overhead_pct_of_e2e']:+.3f}% "
        "of e2e)"
    )
    print(
        f"adding a concept to the running pipeline: {c['add_concept_ms']:.3f} ms "
        f"(parse + check + publish); first request with it "
        f"{c['first_request_with_new_concept_ms']:.0f} ms, backend reloaded: "
        f"{c['backend_reloaded']}"
    )


def _stats(values: dict[str, float]) -> str:
    return f"{values['median_ms']:.1f} ({values['min_ms']:.1f}-{values['max_ms']:.1f})"
