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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from textinv.choices import coerce_choices
from textinv.cli.bench.generate_checks import UNET_CHECK
from textinv.cli.bench.generate_runners import DIFFUSERS_SAME, EAGER, REFERENCE
from textinv.cli.bench.generate_setup import (
    cast_model,
    load_pipelines,
    open_optimum,
    optimum_runner,
    peer_models,
    place_model,
)
from textinv.cli.bench.optimum_peer import OptimumRunner
from textinv.dtypes import precision_of
from textinv.hardware import PrecisionChoice
from textinv.model import BaseModel
from textinv_client.choices import Precision, Scheduler
from textinv_client.flags import add_flags, flag, from_flags
from textinv_server.backends import BackendName, TorchOptions
from textinv_server.backends.torch_backend import weights_precision
from textinv_server.pipeline import GenerationPipeline
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

    model: str | None = field(  # a model folder, a shape model, or None: the embedded model
        metadata=flag("a model folder, sd15-shape or sdxl-shape (default: embedded)")
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
    # Weights for every runner, diffusers included; None: as loaded (fp32). auto: ours in what
    # the processor runs fastest (textinv.hardware), diffusers in fp32 and, where ours differs,
    # in ours too (DIFFUSERS_SAME), so each ratio says what the dtype adds and what our code adds.
    weights: Precision | None = field(
        default=Precision.AUTO, metadata=flag("every runner's; auto: ours by the processor")
    )
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
    # optimum-onnx's ORT pipeline as a peer, in a venv of its own built on first use (minutes;
    # TEXTINV_BENCH_NO_OPTIMUM=1 skips it, TEXTINV_BENCH_OPTIMUM_PYTHON names a ready python).
    optimum: bool = field(default=False, metadata=flag("also optimum's ORT pipeline (own venv)"))

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
        peers: dict[str, BaseModel] | None = None,
        precision: PrecisionChoice | None = None,
    ) -> None:
        self.settings, self.model, self.pipelines, self.notes = settings, model, pipelines, notes
        self.peers = peers or {REFERENCE: model}  # diffusers' runners' models, by name
        self.precision = precision or weights_precision(None, model)
        self.optimum: dict[str, OptimumRunner] = {}  # open_optimum's, by runner name
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
        request = self.request(num_images)
        rows = measure_runners(
            self.model, self.pipelines, request, s.warmup, repeats,
            torch.device(s.device), peers=self.peers,
            extra={name: optimum_runner(r, request) for name, r in self.optimum.items()},
            same_precision=self._in_peer_precision(),
        )  # fmt: skip
        rows["repeats"] = repeats
        self.batches[str(num_images)] = rows
        return rows

    def runner_precisions(self) -> dict[str, str]:
        """What each runner computes in, by name: ours (each backend's own), diffusers' and
        optimum's (its export is fp32)."""
        found = {name: p.backend.precision.precision.value for name, p in self.pipelines.items()}
        found.update({name: precision_of(m.unet.dtype).value for name, m in self.peers.items()})
        found.update({name: Precision.FP32.value for name in self.optimum})
        return found

    def _in_peer_precision(self) -> set[str]:
        """Our runners in the precision of diffusers' same-precision runner (none without one)."""
        precisions = self.runner_precisions()
        same = precisions.get(DIFFUSERS_SAME)
        return {name for name in self.pipelines if same is not None and precisions[name] == same}

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
        report["precision"] = {
            "ours": self.precision.precision.value,  # the torch backend's (auto resolved)
            "reason": self.precision.reason,
            **self.runner_precisions(),  # each runner's, by name
        }
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
    precision = place_model(model, settings)
    peers = peer_models(model, settings, precision)
    cast_model(model, precision.precision)
    side = settings.resolution or model.default_resolution
    notes = [f"precision: ours {precision.describe()}; " + ", ".join(
        f"{name} {peer.unet.dtype}" for name, peer in peers.items())]  # fmt: skip
    with (
        tempfile.TemporaryDirectory(prefix="textinv-bench-generate-") as scratch,
        contextlib.ExitStack() as stack,
    ):
        pipelines = load_pipelines(peers[REFERENCE], model, settings, side, Path(scratch), notes)
        bench = GenerateBench(settings, model, pipelines, notes, peers, precision)
        bench.optimum = open_optimum(settings, model, stack, notes)
        yield bench


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
        "weights": settings.weights.value if settings.weights else "as loaded",
        "precision": precision_of(model.unet.dtype).value,
        "channels_last": settings.channels_last,
        "num_images": list(settings.num_images),
        "compile_backend": settings.compile_backend,
        "torch_variants": [v.label for v in settings.torch_variants],
    }
