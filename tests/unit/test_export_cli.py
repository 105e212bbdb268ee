"""``textinv export`` and ``textinv bench export``: bad input gets one clear line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textinv.cli import main
from textinv_export.manifest import load_manifest
from textinv_export.tensorrt import tensorrt_missing


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_missing_model_is_named(capsys, tmp_path: Path) -> None:
    code, _, err = _run(capsys, "export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path))
    assert code == 2 and "nope" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value", "fragment"),
    [
        ("--batch-sizes", "4:2:1", "MIN 4 > MAX 1"),
        ("--resolutions", "512:768:256", "MIN 512 > MAX 256"),
        ("--resolutions", "60:64:96", "resolution 60 in 60:64:96 is not a multiple of 8"),
        ("--prompt-chunks", "many", "--prompt-chunks 'many' is not a whole number"),
        ("--prompt-chunks", "12", "prompt chunks 12 must be between 1 and 8"),
    ],
)
def test_bad_ranges_are_refused(
    capsys, tiny_model_dir: Path, tmp_path: Path, flag, value, fragment
):
    code, _, err = _run(
        capsys, "export", "--model", str(tiny_model_dir), "--out", str(tmp_path), flag, value
    )
    assert code == 2 and fragment in err


def test_unwritable_output_folder_is_named(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "exports"
    code, _, err = _run(capsys, "export", "--model", str(tiny_model_dir), "--out", str(out))
    assert code == 2 and "not writable" in err and str(out) in err


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT and CUDA are present here")
def test_tensorrt_target_fails_at_once_with_the_install_hint(capsys, tmp_path: Path) -> None:
    # The model does not even exist: the TensorRT check comes before any loading.
    code, _, err = _run(
        capsys,
        "export",
        "--model",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path),
        "--target",
        "tensorrt",
    )
    assert code == 2
    assert str(tensorrt_missing()) in err and "pip install 'textinv[gpu]'" in err


def test_export_with_check_prints_parity(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, out, _ = _run(
        capsys,
        "export",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path),
        "--components",
        "text_encoder",
        "--batch-sizes",
        "1:1:2",
        "--check",
    )
    assert code == 0
    assert "text_encoder [batch 2] pooled_output: max abs error" in out
    assert "parity ok" in out
    manifest = load_manifest(tmp_path)
    assert [c.value for c in manifest.components] == ["text_encoder"]
    assert str(manifest.ranges.resolution) == "32:64:96"  # half to 1.5× the tiny model's 64 px


def test_unknown_component_is_named(capsys, tiny_model_dir: Path, tmp_path: Path) -> None:
    code, _, err = _run(
        capsys,
        "export",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(tmp_path),
        "--components",
        "unett",
    )
    assert code == 2 and "'unett'" in err


def test_bench_export_reports_sizes_and_times(capsys, tiny_model_dir: Path) -> None:
    code, out, _ = _run(
        capsys,
        "bench",
        "export",
        "--model",
        str(tiny_model_dir),
        "--components",
        "vae_decoder",
        "--json",
    )
    assert code == 0
    rows = json.loads(out.splitlines()[-1])["rows"]
    assert [r["component"] for r in rows] == ["vae_decoder"]
    row = rows[0]
    assert row["raw_mb"] > 0 and row["optimized_mb"] > 0 and row["export_s"] > 0
    assert 0 < row["optimized_nodes"] <= row["raw_nodes"]
