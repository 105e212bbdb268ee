"""``textinv bench generate``: our pipeline per backend against diffusers, in one run.

For each available backend (torch always; onnxruntime on ``--engines``, or on an export made
here into a temporary folder; tensorrt where CUDA and engines exist) and for diffusers'
``StableDiffusionPipeline`` built from the same modules, it runs the same request (model,
scheduler, steps, size, seed) ``--warmup`` times unmeasured, then ``--repeats`` times,
round-robin across the runners so a noisy neighbour hurts all of them alike. It reports the
median and spread (min-max) of end-to-end latency and of each stage, and ratios to diffusers.
``--num-images 1 4`` does this for each batch (images in one request) over the same loaded
pipelines; each row also holds the first run's time (compilation, capture), memory, pixel
differences, the one-call UNet check, or the error of a runner that failed (``generate_runners``;
``ROW_NOTES``: how to read them). ``runners`` holds the first batch's rows (what ``bench
report`` reads), ``batches`` every batch's.

Concepts: the same request with 0 and with 3 concepts (K = 2 each) on the fastest backend, end to
end, plus the host-side prompt work alone (where the concepts' whole cost lives). Adding a
concept to a running pipeline: parse and check a concept file's bytes and publish its vectors,
then the next request uses it with the same backend sessions (no re-export, no reload).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from textinv.choices import coerce_choices
from textinv.cli.bench.generate_runners import EAGER, UNET_CHECK
from textinv.dtypes import torch_dtype
from textinv.model import BaseModel
from textinv_client.choices import Precision, Scheduler
from textinv_client.flags import add_flags, flag, from_flags
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline
from textinv_server.requests import GenerationRequest

PROMPT_PLAIN = "a photo of a toy with a cat in red style"
# How to read the rows (the report's notes): the first always, the others on CUDA.
ROW_NOTES = (
    f"{UNET_CHECK} (one UNet call on a fixed seeded input, against eager on the same weights) "
    "is the per-call correctness check; pixel differences compare whole trajectories, which in "
    "bf16 (random sd15-shape weights especially) can grow tiny per-call differences over 50 "
    "steps: a large max pixel difference alone does not mean a bug.",
)
CUDA_NOTES = (
    "cudnn.benchmark: the torch backend sets it process-wide on CUDA, so diffusers' runner in "
    "this process autotunes its convolutions too (not diffusers' default).",
    "memory: peak_cuda_mib counts torch's caching allocator only (not TensorRT's engine and "
    "context memory, nor onnxruntime's arena); device_used_mib is the whole GPU's (total - "
    "free, every allocator and process), sampled before and after each run: coarse.",
)


@dataclass(frozen=True)
class TorchVariant:
    """One way of running the torch backend, measured as its own runner (``torch-compile``)."""

    label: str
    options: TorchOptions = field(default_factory=TorchOptions)


# The variants ``--torch-variants`` names; "torch" alone is eager with the model as loaded.
# compile+cuda-graph: the compiled UNet captured as a CUDA graph (as stable-fast's figures run).
VARIANTS = {
    "eager": TorchVariant(EAGER),
    "compile": TorchVariant("torch-compile", TorchOptions(compile=True)),
    "cuda-graph": TorchVariant("torch-cudagraph", TorchOptions(cuda_graph=True)),
    "compile+cuda-graph": TorchVariant(
        "torch-compile-cudagraph", TorchOptions(compile=True, cuda_graph=True)
    ),
}


@dataclass(frozen=True)
class GenerateBenchSettings:
    """One ``bench generate`` run: every runner gets the same request."""

    model: str | None = field(  # a model folder, sd15-shape, or None: the embedded model
        metadata=flag("a model folder, or sd15-shape (default: embedded)")
    )
    engines: Path | None = field(
        default=None, metadata=flag("an export folder for onnxruntime/tensorrt")
    )
    backends: tuple[BackendName, ...] | None = field(
        default=None, metadata=flag("which backends (default: every one available)", nargs="+")
    )
    steps: int = field(default=10, metadata=flag("denoising steps (10)"))
    resolution: int | None = field(  # None: the model's native size
        default=None, metadata=flag("image side (native)")
    )
    scheduler: Scheduler = field(default=Scheduler.DDIM, metadata=flag("the noise scheduler"))
    guidance: float = field(default=7.5, metadata=flag("classifier-free guidance scale"))
    seed: int = field(default=0, metadata=flag("the request's seed"))
    warmup: int = field(default=1, metadata=flag("unmeasured runs per runner (1)"))
    repeats: int = field(default=5, metadata=flag("measured runs per runner (5)"))
    threads: int = field(default=0, metadata=flag("CPU threads (library default)"))
    device: str = field(default="cpu", metadata=flag("cpu, cuda, cuda:1 ..."))
    # Weights for every runner, diffusers included (None: as loaded, fp32).
    weights: Precision | None = field(default=None, metadata=flag("every runner's"))
    channels_last: bool = field(default=False, metadata=flag("the UNet's layout (all)"))
    # Images per request (GenerationRequest.num_images); each value is its own round-robin.
    num_images: tuple[int, ...] = field(
        default=(1,), metadata=flag("images per request, a round-robin each (1)", nargs="+")
    )
    # torch.compile's backend for every compile variant (None: each variant's own, inductor);
    # "eager" runs dynamo's tracing alone, for a CPU dry run.
    compile_backend: str | None = field(default=None, metadata=flag("inductor, eager, ..."))
    # flag: --torch-variants eager,compile
    torch_variants: tuple[TorchVariant, ...] = field(default=(VARIANTS["eager"],))
    concepts: bool = True  # also measure the concepts' costs

    def __post_init__(self) -> None:
        coerce_choices(self)  # callers may spell the choices as text ("euler", "bf16")
        for name in ("steps", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be ≥ 0, got {self.warmup}")
        if not self.num_images or min(self.num_images) < 1:
            raise ValueError(f"num_images must each be ≥ 1, got {self.num_images}")


def add_generate_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    bench = bench_subparsers.add_parser(
        "generate", help="generation latency per backend against diffusers' pipeline"
    )
    add_flags(bench, GenerateBenchSettings)
    bench.add_argument(
        "--torch-variants",
        default="eager",
        help=f"comma-separated torch runners: {', '.join(VARIANTS)} (eager)",
    )
    bench.add_argument("--json", type=Path, default=None, metavar="OUT", help="write JSON here")
    bench.set_defaults(func=run_generate_bench)


def settings_from_args(args: argparse.Namespace) -> GenerateBenchSettings:
    return from_flags(
        GenerateBenchSettings,
        args,
        torch_variants=parse_variants(args.torch_variants),
    )


def parse_variants(text: str) -> tuple[TorchVariant, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"--torch-variants {text!r}: choose from {', '.join(VARIANTS)}")
    return tuple(VARIANTS[name] for name in names)


def run_generate_bench(args: argparse.Namespace) -> int:
    from textinv.cli.bench.generate_table import print_report

    report = measure_generate(settings_from_args(args))
    s = report["settings"]
    print(
        f"generate bench: {s['model']}, {s['resolution']}×{s['resolution']} px, {s['steps']} "
        f"steps ({s['scheduler']}), guidance {s['guidance']}, seed {s['seed']}, "
        f"torch threads {s['torch_threads']}, {s['warmup']} warm-up + {s['repeats']} runs, "
        f"{s['device']}, weights {s['weights']}"
    )
    for note in report["notes"]:
        print(note)
    print_report(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def measure_generate(
    settings: GenerateBenchSettings, model: BaseModel | None = None
) -> dict[str, Any]:
    """Every runner against diffusers at each ``num_images``, round-robin, as plain data
    (``model`` reuses one)."""
    with open_generate_bench(settings, model) as bench:
        for images in settings.num_images:
            bench.measure(images)
        if settings.concepts:
            bench.measure_concepts()
        return bench.report()


class GenerateBench:
    """One ``bench generate`` set-up, loaded once: the model placed, every runner's pipeline.
    ``measure`` runs one round-robin at a batch; ``report`` is everything measured so far."""

    def __init__(
        self,
        settings: GenerateBenchSettings,
        model: BaseModel,
        pipelines: dict[str, GenerationPipeline],
        notes: list[str],
    ) -> None:
        self.settings, self.model, self.pipelines, self.notes = settings, model, pipelines, notes
        self.side = settings.resolution or model.default_resolution
        self.batches: dict[str, dict[str, Any]] = {}  # str(num_images) → rows
        self.concepts: dict[str, Any] | None = None

    def request(self, num_images: int) -> GenerationRequest:
        s = self.settings
        return GenerationRequest(
            PROMPT_PLAIN, steps=s.steps, guidance_scale=s.guidance, seed=s.seed,
            width=self.side, height=self.side, scheduler=s.scheduler, num_images=num_images,
        )  # fmt: skip

    def measure(self, num_images: int, repeats: int | None = None) -> dict[str, Any]:
        """Every runner at ``num_images`` images per request (``repeats``: the settings')."""
        from textinv.cli.bench.generate_runners import measure_runners

        s = self.settings
        repeats = repeats or s.repeats
        rows = measure_runners(
            self.model, self.pipelines, self.request(num_images), s.warmup, repeats,
            torch.device(s.device),
        )  # fmt: skip
        rows["repeats"] = repeats
        self.batches[str(num_images)] = rows
        return rows

    def measure_concepts(self) -> dict[str, Any]:
        from textinv.cli.bench.generate_concepts import concept_costs

        s = self.settings
        request = self.request(s.num_images[0])
        self.concepts = concept_costs(self.pipelines, request, s.warmup, s.repeats)
        return self.concepts

    def report(self) -> dict[str, Any]:
        first: dict[str, Any] = next(iter(self.batches.values()), {"runners": {}})
        report: dict[str, Any] = {"runners": first["runners"], "batches": dict(self.batches)}
        if self.concepts is not None:
            report["concepts"] = self.concepts
        cuda = self.settings.device.startswith("cuda")
        report["notes"] = [*self.notes, *ROW_NOTES, *(CUDA_NOTES if cuda else ())]
        report["settings"] = _settings_row(self.settings, self.model, self.side)
        return report


@contextlib.contextmanager
def open_generate_bench(
    settings: GenerateBenchSettings, model: BaseModel | None = None
) -> Iterator[GenerateBench]:
    """Load the model (unless given), place it and load every runner's pipeline; an export made
    here for onnxruntime lives in a temporary folder until the block ends."""
    from textinv.testing import load_benchmark_model

    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    model = model or load_benchmark_model(settings.model)
    _place(model, settings)
    side = settings.resolution or model.default_resolution
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="textinv-bench-generate-") as scratch:
        pipelines = _pipelines(model, settings, side, Path(scratch), notes)
        yield GenerateBench(settings, model, pipelines, notes)


def _settings_row(settings: GenerateBenchSettings, model: BaseModel, side: int) -> dict[str, Any]:
    """What the run used, as the report prints it (the native side and thread count resolved)."""
    return {
        "model": settings.model,
        "resolution": side,
        "steps": settings.steps,
        "scheduler": settings.scheduler.value,
        "guidance": settings.guidance,
        "seed": settings.seed,
        "torch_threads": torch.get_num_threads(),
        "warmup": settings.warmup,
        "repeats": settings.repeats,
        "device": settings.device,
        "weights": settings.weights.value if settings.weights else str(model.unet.dtype),
        "channels_last": settings.channels_last,
        "num_images": list(settings.num_images),
        "compile_backend": settings.compile_backend,
        "torch_variants": [v.label for v in settings.torch_variants],
    }


# -- setting up ----------------------------------------------------------------------------------


def _place(model: BaseModel, settings: GenerateBenchSettings) -> None:
    """Device, weights and layout for every runner alike (diffusers shares these modules)."""
    for module in (model.text_encoder, model.unet, model.vae):
        module.to(settings.device)
        if settings.weights is not None:
            module.to(torch_dtype(settings.weights))
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
            with_variant = replace(options, torch_options=_variant_options(variant, settings))
            pipelines[variant.label] = load_generation_pipeline(model, name, with_variant)
    return pipelines


def _variant_options(variant: TorchVariant, settings: GenerateBenchSettings) -> TorchOptions:
    if variant.options.compile and settings.compile_backend is not None:
        return replace(variant.options, compile_backend=settings.compile_backend)
    return variant.options


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
