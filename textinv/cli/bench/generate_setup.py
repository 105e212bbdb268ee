"""Setting up ``textinv bench generate``: the model placed and in its precision, diffusers'
models (an fp32 copy when ``auto`` moved ours off fp32), and our pipeline per backend (an
onnxruntime export made here from the fp32 model when no ``--engines`` is given)."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from textinv.cli.bench.generate_runners import (
    DIFFUSERS_SAME,
    OPTIMUM,
    REFERENCE,
    Runner,
    Samples,
)
from textinv.cli.bench.optimum_peer import (
    OptimumRunner,
    OptimumUnavailable,
    ensure_optimum_python,
)
from textinv.dtypes import torch_dtype
from textinv.hardware import PrecisionChoice
from textinv.model import BaseModel
from textinv_client.choices import Precision
from textinv_server.backends import BackendName, BackendOptions, TorchOptions
from textinv_server.backends.torch_backend import weights_precision
from textinv_server.pipeline import GenerationPipeline, load_generation_pipeline
from textinv_server.requests import GenerationRequest

if TYPE_CHECKING:
    from textinv.cli.bench.generate import GenerateBenchSettings, TorchVariant


def place_model(model: BaseModel, settings: GenerateBenchSettings) -> PrecisionChoice:
    """Device and layout for every runner alike (diffusers shares these modules), and the
    precision ours runs in (``weights`` resolved for the model on its device)."""
    for module in model.modules:
        module.to(settings.device)
    if settings.channels_last:
        model.unet.to(memory_format=torch.channels_last)
    return weights_precision(settings.weights, model)


def peer_models(
    model: BaseModel, settings: GenerateBenchSettings, precision: PrecisionChoice
) -> dict[str, BaseModel]:
    """diffusers' models by runner name: ``model`` itself (shared modules), or, when ``auto``
    moved ours off fp32, an fp32 copy for diffusers as users run it (and the onnxruntime export,
    which is fp32) and ``model`` for diffusers in ours' precision."""
    if settings.weights is not Precision.AUTO or precision.precision is Precision.FP32:
        return {REFERENCE: model}
    fp32 = copy.deepcopy(model)
    cast_model(fp32, Precision.FP32)
    return {REFERENCE: fp32, DIFFUSERS_SAME: model}


def cast_model(model: BaseModel, precision: Precision) -> None:
    for module in model.modules:
        module.to(torch_dtype(precision))


def load_pipelines(
    fp32: BaseModel,
    model: BaseModel,
    settings: GenerateBenchSettings,
    side: int,
    scratch: Path,
    notes: list[str],
) -> dict[str, GenerationPipeline]:
    """Our pipeline per requested and available backend (and torch variant), keyed by label:
    torch on ``model`` (ours' precision), an export made here from ``fp32`` (the same model in
    fp32, or ``model`` itself)."""
    wanted = [BackendName(b) for b in settings.backends] if settings.backends else list(BackendName)
    pipelines: dict[str, GenerationPipeline] = {}
    for name in wanted:
        engines = settings.engines
        if name is BackendName.ONNXRUNTIME and engines is None:
            engines = _export_here(fp32, side, scratch, notes)
        if name is BackendName.TENSORRT and not _tensorrt_usable(engines):
            notes.append(
                "tensorrt: skipped (needs CUDA, the tensorrt package and --engines with engines)"
            )
            continue
        options = BackendOptions(engines=engines, threads=settings.threads, device=settings.device)
        if name is not BackendName.TORCH:
            # The export is fp32: its host side (the token table) comes from the fp32 model too.
            pipeline = pipelines[name.value] = load_generation_pipeline(fp32, name, options)
            threads = getattr(pipeline.backend, "cpu_threads", None)  # onnxruntime on the CPU
            if threads is not None and pipeline.backend.device.type == "cpu":
                notes.append(f"{name.value}: {threads.describe()} (UNet, text encoder)")
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
    from textinv_server.backends.exported import GENERATION_COMPONENTS

    start = time.perf_counter()
    sdxl = (Component.TEXT_ENCODER_2,) if model.is_sdxl else ()
    config = ExportConfig(
        scratch / "engines",
        ranges=ShapeRanges(Range(1, 1, 4), Range(side, side, side)),
        components=GENERATION_COMPONENTS + sdxl,
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


def open_optimum(
    settings: GenerateBenchSettings, model: BaseModel, stack: contextlib.ExitStack, notes: list[str]
) -> dict[str, OptimumRunner]:
    """optimum's ORT pipeline as the ``OPTIMUM`` runner, when asked for and it can run here:
    it exports from a model folder (the embedded model's, or ``--model``'s), in its own venv
    (``optimum_peer``); otherwise a note says why not and the bench goes on without it."""
    if not settings.optimum:
        return {}
    folder = _model_folder(settings.model)
    if folder is None:
        notes.append(f"{OPTIMUM}: skipped ({settings.model} has no folder for optimum to export)")
        return {}
    python = ensure_optimum_python(progress=lambda line: print(f"{OPTIMUM}: {line}"))
    if isinstance(python, OptimumUnavailable):
        notes.append(f"{OPTIMUM}: skipped ({python.reason})")
        return {}
    runner = stack.enter_context(
        OptimumRunner(
            python, folder, threads=settings.threads, scheduler=settings.scheduler.value,
            scheduler_config=dict(model.scheduler_config),
        )
    )  # fmt: skip
    info = runner.info
    notes.append(
        f"{OPTIMUM}: optimum {info.versions.get('optimum', '?')}, onnxruntime "
        f"{info.versions.get('onnxruntime', '?')}, its own fp32 export in {info.export_s:.1f} s, "
        f"providers {', '.join(info.providers)}, session options {info.session_options}"
    )
    return {OPTIMUM: runner}


def _model_folder(model: str | None) -> Path | None:
    from textinv.model import resolve_model_folder
    from textinv.testing import SD15_SHAPE

    return None if model == SD15_SHAPE else resolve_model_folder(model)


def optimum_runner(runner: OptimumRunner, request: GenerationRequest) -> Runner:
    """optimum's pipeline as a round-robin runner: its stage times, taken in its worker the way
    diffusers' runner takes them (step-end callbacks), and its images."""

    def run(samples: Samples) -> None:
        result = runner.generate(
            request.prompt, request.steps, request.guidance_scale, request.width or 0,
            request.height or 0, seed=request.seeds[0], num_images=request.num_images,
        )  # fmt: skip
        step = statistics.median(result.unet_step_ms)
        samples.add(result.e2e_ms, result.text_encoder_ms, step, result.vae_decode_ms)
        samples.images = result.images

    return run
