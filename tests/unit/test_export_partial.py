"""Partial exports into a folder that holds one: the other components stay, each still verified.

An export of some components (``--components``) merges with the manifest already in the folder
when that one has the same model, precision, opset and ranges; ``--force`` redoes the asked
components and keeps the others; an incompatible or damaged earlier export is dropped, named.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from textinv.cli import main
from textinv_export.choices import SD_COMPONENTS
from textinv_export.exporter import ExportConfig, export_model, incompatibility
from textinv_export.manifest import ComponentEntry, EngineEntry, FileEntry, load_manifest, target_of
from textinv_export.specs import Component, Precision, Range, ShapeRanges
from textinv_export.tensorrt import engine_filename

RANGES = ShapeRanges(batch=Range(1, 2, 3), resolution=Range(32, 64, 96))
UNET_ONLY = (Component.UNET,)


@pytest.fixture(scope="module")
def full(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("partial") / "full"
    export_model(tiny_model, ExportConfig(out=out, ranges=RANGES), progress=lambda _: None)
    return out


@pytest.fixture
def folder(full: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(full, tmp_path / "copy"))


def _mtime(folder: Path, component: Component) -> int:
    entry = load_manifest(folder).component(component)
    return (folder / entry.source.path).stat().st_mtime_ns


def test_forced_unet_export_keeps_the_other_three(tiny_model, folder: Path) -> None:
    before = load_manifest(folder)
    written = _mtime(folder, Component.UNET)
    said: list[str] = []
    config = ExportConfig(out=folder, ranges=RANGES, components=UNET_ONLY, force=True)
    result = export_model(tiny_model, config, progress=said.append)
    after = load_manifest(folder, expected_model_hash=tiny_model.model_hash)  # every file verifies
    assert list(after.components) == list(SD_COMPONENTS)
    assert [(r.component, r.reused) for r in result.reports] == [(Component.UNET, False)]
    assert _mtime(folder, Component.UNET) != written  # redone
    for component in (Component.TEXT_ENCODER, Component.VAE_DECODER, Component.VAE_ENCODER):
        assert after.components[component] == before.components[component]
    assert "kept from the earlier export: text_encoder, vae_decoder, vae_encoder" in said


def test_unforced_unet_export_reuses_it_and_keeps_the_rest(tiny_model, folder: Path) -> None:
    written = _mtime(folder, Component.UNET)
    config = ExportConfig(out=folder, ranges=RANGES, components=UNET_ONLY)
    result = export_model(tiny_model, config, progress=lambda _: None)
    assert result.reports[0].reused and _mtime(folder, Component.UNET) == written
    assert list(load_manifest(folder).components) == list(SD_COMPONENTS)


def test_an_incompatible_earlier_export_is_dropped_and_named(tiny_model, folder: Path) -> None:
    said: list[str] = []
    other = ShapeRanges(batch=Range(1, 1, 2), resolution=RANGES.resolution)
    config = ExportConfig(out=folder, ranges=other, components=UNET_ONLY)
    export_model(tiny_model, config, progress=said.append)
    assert list(load_manifest(folder).components) == [Component.UNET]
    dropped = [line for line in said if line.startswith("replacing the earlier export")]
    assert dropped and "its batch sizes 1:2:3, not 1:1:2" in dropped[0]
    assert "vae_encoder" in dropped[0]


def test_a_damaged_earlier_component_is_dropped_and_named(tiny_model, folder: Path) -> None:
    entry = load_manifest(folder).component(Component.VAE_ENCODER)
    graph = folder / entry.graph.path
    graph.write_bytes(graph.read_bytes()[:-1])
    said: list[str] = []
    config = ExportConfig(out=folder, ranges=RANGES, components=UNET_ONLY)
    export_model(tiny_model, config, progress=said.append)
    kept = load_manifest(folder).components
    assert list(kept) == [Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER]
    assert any(line.startswith("vae_encoder: not kept") and "truncated" in line for line in said)


def test_cli_forced_unet_export_keeps_every_component(
    capsys: pytest.CaptureFixture[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    common = ["export", "--model", str(tiny_model_dir), "--out", str(tmp_path)]
    common += ["--batch-sizes", "1:1:2"]
    assert main(common) == 0
    written = _mtime(tmp_path, Component.UNET)
    capsys.readouterr()
    assert main([*common, "--components", "unet", "--force"]) == 0
    out = capsys.readouterr().out
    assert "unet: written" in out and "kept from the earlier export" in out
    manifest = load_manifest(tmp_path)  # every file of every component verifies
    assert list(manifest.components) == list(SD_COMPONENTS)
    assert _mtime(tmp_path, Component.UNET) != written


def _with_engine(entry: ComponentEntry) -> ComponentEntry:
    name = engine_filename(entry.spec.name, Precision.FP16, "10.8.0.43", "0" * 64)
    engine = EngineEntry(
        FileEntry(f"engines/{name}", "a" * 64, 1),
        "0" * 64,
        "10.8.0.43",
        "H200",
        "9.0",
        Precision.FP16,
    )
    return ComponentEntry(entry.spec, entry.source, entry.graph, engine=engine)


def test_target_is_tensorrt_only_when_every_component_has_an_engine(full: Path) -> None:
    entries = list(load_manifest(full).components.values())
    assert target_of(entries).value == "onnx"
    assert target_of([_with_engine(e) for e in entries]).value == "tensorrt"
    assert target_of([_with_engine(entries[0]), *entries[1:]]).value == "onnx"  # a kept one lacks
    assert target_of([]).value == "onnx"


def test_incompatibility_names_each_difference(tiny_model, full: Path) -> None:
    manifest = load_manifest(full)
    same = ExportConfig(out=full, ranges=RANGES)
    assert incompatibility(manifest, tiny_model.model_hash, same) is None
    other_model = incompatibility(manifest, "0" * 64, same)
    assert other_model is not None and "not 0000000000000000" in other_model
    other = ExportConfig(
        out=full, precision=Precision.FP16, ranges=ShapeRanges(RANGES.batch, Range(32, 32, 64))
    )
    reason = incompatibility(manifest, tiny_model.model_hash, other)
    assert reason == "its precision fp32, not fp16; its resolutions 32:64:96, not 32:32:64"
