"""``bench invert`` on SDXL: the reference method of diffusers' ``textual_inversion_sdxl.py``
trains both encoders' whole tables and keeps only the placeholder rows; both methods run."""

from __future__ import annotations

from pathlib import Path

from textinv.cli.bench.invert import InvertBenchSettings, _make_images, measure_invert
from textinv.cli.bench.invert_reference import ReferenceMethod, text_encoders
from textinv.model import load_base_model


def test_the_sdxl_reference_trains_only_the_placeholder_rows_of_both_tables(
    tiny_sdxl_model_dir: Path, tmp_path: Path
) -> None:
    images = _make_images(tmp_path / "images", count=2, side=128)
    settings = InvertBenchSettings(
        model=str(tiny_sdxl_model_dir), resolution=32, images=str(images), vectors=2
    )
    model = load_base_model(tiny_sdxl_model_dir)
    method = ReferenceMethod(settings, model)
    before = [e.get_input_embeddings().weight.detach().clone() for _, e in text_encoders(model)]
    method.step(0)
    for table, (_, encoder), ids in zip(
        before, text_encoders(model), method.placeholder_ids, strict=True
    ):
        after = encoder.get_input_embeddings().weight.detach()
        moved = (after != table).any(dim=1).nonzero().flatten().tolist()
        assert moved == ids  # both placeholder rows, nothing else


def test_bench_invert_runs_both_methods_on_sdxl(tiny_sdxl_model_dir: Path) -> None:
    settings = InvertBenchSettings(
        model=str(tiny_sdxl_model_dir), resolution=32, steps=1, warmup=0, threads=1
    )
    summary = measure_invert(settings, timeout_s=600)
    assert (
        summary["speedup"]
        == summary["textinv"]["steps_per_s"] / summary["reference"]["steps_per_s"]
    )
    assert summary["textinv"]["precision"] and summary["reference"]["precision"] == "fp32"
    for method in ("textinv", "reference"):  # training's peak, after the model was built
        row = summary[method]
        assert row["peak_rss_is_training_only"]  # Linux
        assert row["rss_after_load_mib"] * 0.9 <= row["peak_rss_mib"]
