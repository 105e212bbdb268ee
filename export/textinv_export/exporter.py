"""The export stage end to end: specs → ONNX → optimized graphs → (engines) → manifest.

Layout of the output folder (paths in the manifest are relative to it)::

    DIR/manifest.json
    DIR/onnx/<component>.onnx[.data]                raw fp32 export (TensorRT parses this)
    DIR/onnx/<component>.<precision>.opt.onnx[.data]  optimized for onnxruntime
    DIR/engines/<component>.<precision>.trt<version>.<key>.plan
    DIR/engines/timing_cache.trt<version>.<gpu>.sm<cc>.cache
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textinv.errors import InvalidInputError
from textinv.model import BaseModel
from textinv_export.choices import Component, Target
from textinv_export.config import ExportConfig
from textinv_export.manifest import (
    MANIFEST_NAME,
    ComponentEntry,
    EngineEntry,
    FileEntry,
    Manifest,
    ManifestError,
    ModelFacts,
    check_file,
    read_manifest,
    target_of,
    write_manifest,
)
from textinv_export.modules import export_module
from textinv_export.onnx_export import data_path, export_onnx, graph_size
from textinv_export.optimize import optimize_graph
from textinv_export.specs import ComponentSpec, ModelDims
from textinv_export.specs import component_specs as build_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComponentReport:
    """What one component cost: seconds per stage and bytes before/after optimization."""

    component: Component
    reused: bool
    export_seconds: float
    optimize_seconds: float
    engine_seconds: float
    source_bytes: int
    graph_bytes: int


@dataclass(frozen=True)
class ExportResult:
    manifest: Manifest
    reports: tuple[ComponentReport, ...]


Progress = Callable[[str], None]


def export_model(
    model: BaseModel, config: ExportConfig, progress: Progress | None = None
) -> ExportResult:
    """Export ``config.components`` of ``model`` into ``config.out``, keeping what is there.

    A manifest already in the folder, written from the same model with the same precision, opset
    and ranges, keeps its other components (each whose files still verify), and lends the asked
    ones when their spec is unchanged, unless ``--force``. One that differs is replaced whole, with
    a progress line that names why. ``reports`` cover the asked components only.
    """
    say = progress or log.info
    # 1. Fail before any work: TensorRT missing, the output folder not writable, bad ranges, a
    # component the model does not have.
    if config.target is Target.TENSORRT:
        from textinv_export.tensorrt import require_tensorrt

        require_tensorrt()
    check_writable(config.out)
    specs = build_specs(ModelDims.of(model), config.ranges)
    asked = asked_components(config, specs, model)
    # 2. What an earlier export left here that this one may keep.
    earlier = earlier_components(model, config, say)
    components = dict(earlier)
    reports = []
    # 3. Each asked component: export, optimize, build its engine (or reuse them, unless --force).
    for component in asked:
        old = None if config.force else earlier.get(component)
        entry, report = export_component(model, specs[component], config, old, say)
        components[component] = entry
        reports.append(report)
    kept = [c.value for c in earlier if c not in asked]
    if kept:
        say(f"kept from the earlier export: {', '.join(kept)}")
    manifest = Manifest(
        model=model_facts(model),
        precision=config.precision,
        target=target_of(components.values()),
        opset=config.opset,
        ranges=config.ranges,
        components={c: components[c] for c in Component if c in components},
    )
    # 4. The manifest last, atomically: an interrupted export leaves the old one or none.
    write_manifest(config.out, manifest)
    return ExportResult(manifest, tuple(reports))


def asked_components(
    config: ExportConfig, specs: dict[Component, ComponentSpec], model: BaseModel
) -> tuple[Component, ...]:
    """``config.components`` (none: every one the model has); one it lacks is bad input."""
    has = ", ".join(c.value for c in specs)
    for component in config.components:
        if component not in specs:
            raise InvalidInputError(
                f"--components {component.value}: {model.path.name} has no such part (only "
                f"SDXL models have a second text encoder); it has {has}"
            )
    return config.components or tuple(specs)


def export_component(
    model: BaseModel,
    spec: ComponentSpec,
    config: ExportConfig,
    old: ComponentEntry | None,
    say: Progress,
) -> tuple[ComponentEntry, ComponentReport]:
    """One component's graphs (or ``old``'s, when its spec is unchanged) and its engine."""
    export_s = optimize_s = engine_s = 0.0
    if old is not None and old.spec == spec:
        say(f"{spec.name}: reusing {old.graph.path}")
        entry = old
    else:
        entry, export_s, optimize_s = export_graphs(model, spec, config, say)
    if config.target is Target.TENSORRT:
        started = time.perf_counter()
        entry = with_engine(entry, config, model.model_hash)
        engine_s = time.perf_counter() - started
        assert entry.engine is not None
        say(f"{spec.name}: engine {entry.engine.file.path} in {engine_s:.1f} s")
    report = ComponentReport(
        component=spec.component,
        reused=entry == old,  # graphs and engine (the same engine file is an equal entry)
        export_seconds=export_s,
        optimize_seconds=optimize_s,
        engine_seconds=engine_s,
        source_bytes=_bytes(entry.source, entry.source_data),
        graph_bytes=_bytes(entry.graph, entry.graph_data),
    )
    return entry, report


def export_graphs(
    model: BaseModel, spec: ComponentSpec, config: ExportConfig, say: Progress
) -> tuple[ComponentEntry, float, float]:
    """Export ``spec``'s raw graph, then optimize it: the entry and each stage's seconds."""
    out = Path(config.out)
    onnx_dir = out / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    # a. Raw fp32 graph in standard ONNX operators.
    started = time.perf_counter()
    module = export_module(spec.component, model)
    source = export_onnx(module, spec, onnx_dir / f"{spec.name}.onnx", opset=config.opset)
    export_s = time.perf_counter() - started
    say(
        f"{spec.name}: exported {source.name} ({graph_size(source) / 1e6:.1f} MB) "
        f"in {export_s:.1f} s"
    )
    # b. Optimized (and fp16) graph for onnxruntime.
    started = time.perf_counter()
    graph = onnx_dir / f"{spec.name}.{config.precision.value}.opt.onnx"
    optimize_graph(source, graph, spec.component, config.precision)
    optimize_s = time.perf_counter() - started
    say(
        f"{spec.name}: optimized to {graph.name} ({graph_size(graph) / 1e6:.1f} MB) "
        f"in {optimize_s:.1f} s"
    )
    entry = ComponentEntry(
        spec=spec,
        source=FileEntry.of(out, source),
        graph=FileEntry.of(out, graph),
        source_data=_data_entry(out, source),
        graph_data=_data_entry(out, graph),
    )
    return entry, export_s, optimize_s


def _bytes(graph: FileEntry, data: FileEntry | None) -> int:
    """A graph's bytes on disk, with its external weights."""
    return graph.size + (data.size if data is not None else 0)


def with_engine(entry: ComponentEntry, config: ExportConfig, model_hash: str) -> ComponentEntry:
    """``entry`` with a TensorRT engine built from its raw graph (or reused, unless ``--force``)."""
    from dataclasses import replace

    from textinv_export.tensorrt import build_engine

    out = Path(config.out)
    built = build_engine(
        out / entry.source.path,
        entry.spec,
        out / "engines",
        config.precision,
        model_hash=model_hash,
        source_sha256s=entry.source_sha256s,
        force=config.force,
    )
    engine = EngineEntry(
        file=FileEntry.of(out, built.path),
        cache_key=built.cache_key,
        tensorrt_version=built.tensorrt_version,
        gpu_name=built.gpu.name,
        compute_capability=built.gpu.compute_capability,
        precision=config.precision,
    )
    return replace(entry, engine=engine)


def _data_entry(out: Path, graph: Path) -> FileEntry | None:
    data = data_path(graph)
    return FileEntry.of(out, data) if data.is_file() else None


def model_facts(model: BaseModel) -> ModelFacts:
    return ModelFacts(
        model_hash=model.model_hash,
        model_path=str(model.path),
        text_width=model.text_width,
        text_width_2=model.text_widths[1] if model.is_sdxl else None,
        vae_scale_factor=model.vae_scale_factor,
        latent_scaling=model.latent_scaling,
        prediction_type=model.prediction_type,
    )


def earlier_components(
    model: BaseModel, config: ExportConfig, say: Progress
) -> dict[Component, ComponentEntry]:
    """The components of the manifest already in ``config.out`` that this export may keep: none
    if there is none or it is incompatible (``incompatibility``), else each whose files verify."""
    folder = Path(config.out)
    if not (folder / MANIFEST_NAME).is_file():
        return {}
    try:
        manifest = read_manifest(folder)
    except ManifestError as error:
        say(f"replacing the earlier export: {error}")
        return {}
    reason = incompatibility(manifest, model.model_hash, config)
    if reason is not None:
        names = ", ".join(c.value for c in manifest.components)
        say(f"replacing the earlier export ({names}): {reason}")
        return {}
    kept = {}
    for component, entry in manifest.components.items():
        try:
            for file in entry.files:
                check_file(folder, file)
        except ManifestError as error:
            say(f"{component.value}: not kept from the earlier export: {error}")
            continue
        kept[component] = entry
    return kept


def incompatibility(manifest: Manifest, model_hash: str, config: ExportConfig) -> str | None:
    """Why ``manifest``'s components cannot sit in one manifest with this export's, or None:
    a manifest has one model, precision, opset and set of ranges for all its components."""
    if manifest.model_hash != model_hash:
        return f"it was exported from model {manifest.model_hash[:16]}…, not {model_hash[:16]}…"
    differences = [
        (what, theirs, ours)
        for what, theirs, ours in (
            ("precision", manifest.precision.value, config.precision.value),
            ("opset", manifest.opset, config.opset),
            ("batch sizes", manifest.ranges.batch, config.ranges.batch),
            ("resolutions", manifest.ranges.resolution, config.ranges.resolution),
        )
        if theirs != ours
    ]
    if not differences:
        return None
    return "; ".join(f"its {what} {theirs}, not {ours}" for what, theirs, ours in differences)


def check_writable(folder: Path) -> None:
    """Create ``folder`` and prove we can write in it, or raise naming it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as error:
        raise InvalidInputError(
            f"output folder {str(folder)!r} is not writable: {error.strerror or error}"
        ) from error
