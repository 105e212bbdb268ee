"""``textinv bench report --quick`` end to end: the files, the ratios, the FLOPs (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textinv.cli import main
from textinv.cli.bench.report_machine import peak_for


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["bench", "report", "--quick", "--threads", "1", "--out", str(out)]
    assert main([*argv, "--peak-tflops", "0.1"]) == 0
    return out


def test_writes_json_markdown_and_three_plots(report_dir: Path) -> None:
    for name in ("report.json", "report.md", "stages.png", "concurrency.png", "training.png"):
        path = report_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (report_dir / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_json_holds_every_comparison_as_a_ratio(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    ratios = report["ratios"]
    expected = {
        "invert_speedup_vs_reference",
        "invert_peak_rss_vs_reference",
        "generate_torch_e2e_speedup_vs_diffusers",
        "generate_torch_unet_step_speedup_vs_diffusers",
        "serve_grpc_p50_vs_in_process_c1",
        "serve_batching_throughput_vs_unbatched_c1",
        "serve_batching_throughput_vs_unbatched_c4",
    }
    assert expected <= set(ratios)
    assert all(value > 0 for value in ratios.values())
    invert = report["invert"]
    assert ratios["invert_speedup_vs_reference"] == pytest.approx(
        invert["textinv"]["steps_per_s"] / invert["reference"]["steps_per_s"]
    )


def test_records_machine_versions_settings_and_spread(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert report["machine"]["cpu_count"] >= 1
    assert {"torch", "diffusers", "python"} <= set(report["versions"])
    assert report["settings"]["quick"] is True
    assert report["settings"]["generate"]["repeats"] == 3
    torch_row = report["generate"]["runners"]["torch"]
    assert torch_row["e2e"]["min_ms"] <= torch_row["e2e"]["median_ms"] <= torch_row["e2e"]["max_ms"]
    assert len(report["invert"]["textinv"]["step_s"]) == 4  # 1 warm-up + 3 timed
    assert {r["mode"] for r in report["serve"]} == {"in-process", "grpc", "unbatched"}


def test_flops_are_counted_and_used_for_the_fraction_of_peak(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    flops = report["flops"]
    assert flops["unet_flops_per_denoising_step"] > 1e9  # the tiny UNet, 2 rows at 64 px
    # forward + backward to the inputs of one row costs more than a forward of one row
    assert flops["unet_flops_per_train_step"] > flops["unet_flops_per_denoising_step"] / 2
    assert report["peak"] == {"tflops": 0.1, "source": "--peak-tflops"}
    row = report["utilization"]["generate/torch"]
    assert row["fraction_of_peak"] == pytest.approx(row["tflops"] / 0.1)
    assert "of peak" in (report_dir / "report.md").read_text()


def test_cpu_peak_without_a_figure_is_labelled_an_estimate() -> None:
    peak = peak_for("cpu", None)
    assert peak.tflops > 0 and peak.source.startswith("estimate:")


def test_a_bad_peak_is_refused_naming_the_value(tmp_path, capsys) -> None:
    argv = ["bench", "report", "--quick", "--out", str(tmp_path), "--peak-tflops", "-3"]
    assert main(argv) == 2
    assert "-3" in capsys.readouterr().err


def test_a_failed_runner_is_reported_not_fatal(report_dir: Path, tmp_path: Path) -> None:
    from textinv.cli.bench.plots import stages
    from textinv.cli.bench.report import ratios
    from textinv.cli.bench.report_machine import Peak, utilization
    from textinv.cli.bench.report_markdown import write_report

    report = json.loads((report_dir / "report.json").read_text())
    failed = {"status": "failed", "error": "RuntimeError: no C compiler", "failed_in_round": 0}
    report["generate"]["runners"]["torch-compile"] = failed
    invert, generate = report["invert"], report["generate"]
    assert "generate_torch-compile_e2e_speedup_vs_diffusers" not in ratios(invert, generate, [])
    rows = utilization(invert, generate, report["flops"], Peak(0.1, "--peak-tflops"))
    assert "generate/torch" in rows and "generate/torch-compile" not in rows
    assert stages(generate, tmp_path / "stages.png").stat().st_size > 0
    write_report(report, tmp_path)
    assert "failed: RuntimeError: no C compiler" in (tmp_path / "report.md").read_text()
