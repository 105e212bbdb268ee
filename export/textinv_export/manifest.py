"""``DIR/manifest.json``: what an export wrote, for whoever loads it (DESIGN decision 7).

It records the base model's identity (``BaseModel.model_hash``), each component's spec (names,
dtypes, dynamic axes, ``(min, opt, max)`` profile), every file with its sha256 and size, the
precision and opset, the tool versions and the creation time. ``load_manifest`` validates a
manifest and its files; a missing or altered file, or a manifest for another model, raises a
``ManifestError`` that names the file and why. The manifest is written atomically (temporary name,
then rename), so an interrupted export never leaves half of one.

Files per component, paths relative to the manifest's folder:

- ``source``: the raw fp32 export in standard ONNX operators (what TensorRT parses);
- ``graph``: the graph optimized for onnxruntime at the manifest's precision (what the
  ``onnxruntime`` backend loads);
- ``*_data``: their external weights, present when a graph is over 2 GB;
- ``engine``: a TensorRT engine, when the target was ``tensorrt``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from textinv.errors import InvalidInputError
from textinv.fileio import atomic_write_text
from textinv_export.choices import Component, Precision, Target, export_precision
from textinv_export.records import Record, coerce
from textinv_export.specs import ComponentSpec, ShapeRanges

__all__ = [
    "MANIFEST_NAME",
    "ComponentEntry",
    "EngineEntry",
    "FileEntry",
    "FileSelector",
    "Manifest",
    "ManifestError",
    "ModelFacts",
    "Target",  # re-exported: the exporter's closed choice lives in textinv_export.choices
    "ToolVersions",
    "load_manifest",
    "read_manifest",
    "target_of",
    "write_manifest",
]

MANIFEST_NAME = "manifest.json"
# Which of a component's files a loader reads: ``ComponentEntry.graph_files`` and the like.
FileSelector = Callable[["ComponentEntry"], Iterable["FileEntry"]]
FORMAT_VERSION = 1


class ManifestError(InvalidInputError):
    """A manifest or one of its files is missing, malformed, altered, or for another model."""


@dataclass(frozen=True)
class FileEntry(Record):
    """One written file: its path relative to the manifest's folder, sha256 and size."""

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, root: Path, path: Path) -> FileEntry:
        return cls(str(path.relative_to(root)), sha256_file(path), path.stat().st_size)


@dataclass(frozen=True)
class EngineEntry(Record):
    """A TensorRT engine and what it was built for; ``cache_key`` names every input of a build."""

    file: FileEntry
    cache_key: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: Precision  # the one precision flag set (an older manifest's "bf16" is ignored)

    def __post_init__(self) -> None:
        coerce(self, precision=export_precision)


@dataclass(frozen=True)
class ComponentEntry(Record):
    """One exported component: its contract and its files."""

    spec: ComponentSpec
    source: FileEntry  # fp32, standard ONNX operators
    graph: FileEntry  # optimized for onnxruntime at the manifest's precision
    source_data: FileEntry | None = None
    graph_data: FileEntry | None = None
    engine: EngineEntry | None = None

    @property
    def files(self) -> Iterator[FileEntry]:
        """Every file of this component."""
        yield from self.source_files
        yield from self.graph_files
        yield from self.engine_files

    @property
    def source_files(self) -> Iterator[FileEntry]:
        """The raw export and its weights: what TensorRT (and its onnxruntime provider) parse."""
        yield self.source
        if self.source_data is not None:
            yield self.source_data

    @property
    def source_sha256s(self) -> tuple[str, ...]:
        """The sha256 of each file a TensorRT parser reads: the raw graph and, over 2 GB, its
        external weights, so what is keyed by them changes with the weights."""
        return tuple(file.sha256 for file in self.source_files)

    @property
    def graph_files(self) -> Iterator[FileEntry]:
        """The optimized graph and its weights: what onnxruntime's CPU and CUDA providers load."""
        yield self.graph
        if self.graph_data is not None:
            yield self.graph_data

    @property
    def engine_files(self) -> Iterator[FileEntry]:
        """The TensorRT engine, if one was built: all the tensorrt backend loads."""
        if self.engine is not None:
            yield self.engine.file


@dataclass(frozen=True)
class ToolVersions(Record):
    """Versions of the tools that wrote the files; ``None`` where a tool is not installed."""

    torch: str | None
    onnx: str | None
    onnxruntime: str | None
    tensorrt: str | None

    @classmethod
    def installed(cls) -> ToolVersions:
        return cls(
            torch=package_version("torch"),
            onnx=package_version("onnx"),
            onnxruntime=package_version("onnxruntime") or package_version("onnxruntime-gpu"),
            tensorrt=package_version("tensorrt"),
        )


@dataclass(frozen=True)
class ModelFacts(Record):
    """What a runtime needs to know about the base model besides its graphs."""

    model_hash: str
    model_path: str
    text_width: int  # D
    vae_scale_factor: int  # pixels per latent cell
    latent_scaling: float  # divide UNet latents by this before ``vae_decoder``
    prediction_type: str  # "epsilon" or "v_prediction"
    text_width_2: int | None = None  # SDXL's second text encoder's D2; None: it has one

    @property
    def is_sdxl(self) -> bool:
        return self.text_width_2 is not None


@dataclass(frozen=True)
class Manifest:
    """Everything the exports into one folder wrote. ``components`` is keyed by ``Component``;
    ``target`` is ``tensorrt`` when every component has an engine, else ``onnx`` (``target_of``).
    """

    model: ModelFacts
    precision: Precision
    target: Target
    opset: int
    ranges: ShapeRanges
    components: Mapping[Component, ComponentEntry]
    versions: ToolVersions = field(default_factory=ToolVersions.installed)
    created_at: str = field(default_factory=lambda: utc_now())
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        coerce(self, precision=export_precision, target=Target.parse)

    @property
    def model_hash(self) -> str:
        return self.model.model_hash

    def component(self, component: Component | str) -> ComponentEntry:
        key = Component.parse(component)
        if key not in self.components:
            raise ManifestError(f"the manifest has no component {key.value!r}")
        return self.components[key]

    def with_component(self, entry: ComponentEntry) -> Manifest:
        return replace(self, components={**self.components, entry.spec.component: entry})

    def without_component(self, component: Component) -> Manifest:
        kept = {key: entry for key, entry in self.components.items() if key is not component}
        return replace(self, components=kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "created_at": self.created_at,
            "model": self.model.to_dict(),
            "precision": self.precision.value,
            "target": self.target.value,
            "opset": self.opset,
            "ranges": self.ranges.to_dict(),
            "versions": self.versions.to_dict(),
            "components": {c.value: e.to_dict() for c, e in self.components.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        return cls(
            model=ModelFacts.from_dict(data["model"]),
            precision=export_precision(data["precision"]),
            target=Target.parse(data["target"]),
            opset=int(data["opset"]),
            ranges=ShapeRanges.from_dict(data["ranges"]),
            components={
                Component.parse(name): ComponentEntry.from_dict(entry)
                for name, entry in data["components"].items()
            },
            versions=ToolVersions.from_dict(data["versions"]),
            created_at=str(data["created_at"]),
            format_version=int(data["format_version"]),
        )


def target_of(components: Iterable[ComponentEntry]) -> Target:
    """``tensorrt`` if every component has an engine (and there is one), else ``onnx``: a partial
    export keeps components an earlier run wrote, with or without engines."""
    entries = list(components)
    has_engines = bool(entries) and all(entry.engine is not None for entry in entries)
    return Target.TENSORRT if has_engines else Target.ONNX


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``DIR/manifest.json`` atomically: a reader sees the old manifest or the new one."""
    return atomic_write_text(Path(directory) / MANIFEST_NAME, manifest.to_json())


def load_manifest(
    directory: str | Path,
    expected_model_hash: str | None = None,
    *,
    verify_checksums: bool = True,
    components: Iterable[Component] | None = None,
    files: FileSelector | None = None,
    optional: Iterable[Component] = (),
) -> Manifest:
    """Read and validate ``DIR/manifest.json`` and the files it lists.

    Raises ``ManifestError`` naming the file and why: the manifest missing or malformed, written
    for another model than ``expected_model_hash``, or a checked file missing, of another size, or
    (with ``verify_checksums``) of another sha256. Hashing reads every byte (seconds for SD 1.5);
    a server that trusts its disk may pass ``verify_checksums=False`` to check sizes only.

    A loader checks only what it reads: ``components`` (default: all; a listed one that the
    manifest lacks raises), the ``optional`` ones the manifest has (one with none of its files
    on disk was not shipped: the returned manifest leaves it out), and, of each, the files
    ``files(entry)`` names (default: all). So the tensorrt backend hashes its engines, not the
    8 GB of ONNX sources beside them, and a deployment may ship only the files its backend loads.
    """
    folder = Path(directory)
    manifest = read_manifest(folder)
    if expected_model_hash is not None and manifest.model_hash != expected_model_hash:
        raise ManifestError(
            f"{folder / MANIFEST_NAME}: exported from model {manifest.model_hash[:16]}…, "
            f"not the expected model {expected_model_hash[:16]}…; export this model first"
        )
    wanted = manifest.components.keys() if components is None else components
    for component in wanted:
        entry = manifest.component(component)
        for file in entry.files if files is None else files(entry):
            check_file(folder, file, verify_checksums=verify_checksums)
    for component in [c for c in optional if c in manifest.components and c not in wanted]:
        entry = manifest.component(component)
        selected = list(entry.files if files is None else files(entry))
        if not any((folder / file.path).exists() for file in selected):
            manifest = manifest.without_component(component)  # not shipped: left out
            continue
        for file in selected:
            check_file(folder, file, verify_checksums=verify_checksums)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    """Parse ``folder/manifest.json`` without looking at the files it lists."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"no export manifest at {str(path)!r}: run `textinv export` first")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path}: not a readable JSON manifest: {error}") from error
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {version!r} is not {FORMAT_VERSION}; re-export with --force"
        )
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise ManifestError(f"{path}: malformed manifest ({type(error).__name__}: {error})") from (
            error
        )


def check_file(folder: Path, entry: FileEntry, *, verify_checksums: bool = True) -> None:
    path = folder / entry.path
    if not path.is_file():
        raise ManifestError(f"{str(path)!r} is listed in the manifest but missing")
    size = path.stat().st_size
    if size != entry.size:
        raise ManifestError(
            f"{str(path)!r} has {size} bytes, the manifest says {entry.size}: altered or truncated"
        )
    if verify_checksums:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ManifestError(
                f"{str(path)!r} has sha256 {digest[:16]}…, the manifest says "
                f"{entry.sha256[:16]}…: the file was altered"
            )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
