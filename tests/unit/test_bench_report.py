"""``textinv bench report --quick`` end to end: the files, the ratios, the FLOPs, the measured
peak, the instruction sets, serving and the time to the first image (no timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textinv.cli import main
from textinv.hardware import cpu_features


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
    assert {r["mode"] for r in report["serve"]} >= {"in-process", "grpc", "unbatched"}


def test_flops_are_counted_and_used_for_the_fraction_of_peak(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    flops = report["flops"]
    assert flops["unet_flops_per_denoising_step"] > 1e9  # the tiny UNet, 2 rows at 64 px
    # forward + backward to the inputs of one row costs more than a forward of one row
    assert flops["unet_flops_per_train_step"] > flops["unet_flops_per_denoising_step"] / 2
    assert report["peak"]["given_tflops"] == 0.1
    rows = report["utilization"]
    for row in rows.values():
        best = max(r["tflops"] for r in rows.values() if r["precision"] == row["precision"])
        assert row["peak_tflops"] == pytest.approx(max(0.1, best))  # raised where beaten
        assert row["peak_source"] == "--peak-tflops" or row["peak_source"].startswith("max(")
        assert row["fraction_of_peak"] == pytest.approx(row["tflops"] / row["peak_tflops"])
        assert 0 < row["fraction_of_peak"] <= 1
    assert rows["generate/torch"]["precision"] in ("fp32", "bf16")
    assert "of peak" in (report_dir / "report.md").read_text()


def test_the_peak_is_measured_in_fp32_and_bf16(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    measured = report["peak"]["measured"]["cpu"]
    assert set(measured) >= {"fp32", "bf16"}
    for found in measured.values():
        assert found["tflops"] > 0 and found["timings"]
    assert report["peak"]["threads"] == 1  # the benchmarks' --threads
    text = (report_dir / "report.md").read_text()
    assert "## FLOPs and the measured peak" in text and "GEMM" in report["peak"]["method"]


def test_the_machine_names_its_instruction_sets(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    here = cpu_features()
    assert report["machine"]["cpu_instruction_sets"] == list(here.instruction_sets)
    assert report["machine"]["torch_cpu_capability"] == here.torch_capability
    assert report["machine"]["auto_precision"]
    text = (report_dir / "report.md").read_text()
    assert "| cpu_instruction_sets |" in text


def test_the_printed_summary_names_the_machine_the_peaks_and_the_first_image(
    report_dir: Path,
) -> None:
    from textinv.cli.bench.report_markdown import summary_lines

    report = json.loads((report_dir / "report.json").read_text())
    lines = summary_lines(report)
    assert lines[0].startswith("machine: ") and cpu_features().torch_capability in lines[0]
    assert all(name in lines[0] for name in cpu_features().instruction_sets)
    assert any(line.startswith("peak cpu fp32: ") for line in lines)
    assert any(line.startswith("peak cpu bf16: ") for line in lines)
    assert any(line.startswith("time to first image, textinv serve: ready ") for line in lines)
    assert any(line.startswith("time to first image, diffusers: ready ") for line in lines)
    assert not any("%" in line and float(line.split("%")[0].split()[-1]) > 100 for line in lines)


def test_serving_and_the_time_to_the_first_image_are_measured(report_dir: Path) -> None:
    report = json.loads((report_dir / "report.json").read_text())
    assert report["serve_model"]["label"] == "the model"  # the quick model is a folder
    startup = report["startup"]
    ours, theirs = startup["textinv"], startup["diffusers"]
    assert ours["status"] == "ok" and theirs["status"] == "ok", (ours, theirs)
    assert 0 < ours["serving_s"] <= ours["first_image_s"] and ours["png_bytes"] > 0
    assert 0 < theirs["loaded_s"] <= theirs["first_image_s"]
    assert theirs["precision"] == ours["precision"]  # diffusers runs in what the server reported
    assert report["ratios"]["time_to_first_image_speedup_vs_diffusers"] == pytest.approx(
        theirs["first_image_s"] / ours["first_image_s"]
    )
    assert startup["settings"]["steps"] == report["settings"]["serve"]["steps"]
    text = (report_dir / "report.md").read_text()
    assert "## Time to the first image: the model" in text
    assert "## Serving under concurrency: the model" in text


def test_a_bad_peak_is_refused_naming_the_value(tmp_path, capsys) -> None:
    argv = ["bench", "report", "--quick", "--out", str(tmp_path), "--peak-tflops", "-3"]
    assert main(argv) == 2
    assert "-3" in capsys.readouterr().err


def test_a_failed_runner_is_reported_not_fatal(report_dir: Path, tmp_path: Path) -> None:
    from textinv.cli.bench.plots import stages
    from textinv.cli.bench.report import ratios
    from textinv.cli.bench.report_machine import achieved_tflops, utilization
    from textinv.cli.bench.report_markdown import write_report
    from textinv.cli.bench.report_peak import Peak

    report = json.loads((report_dir / "report.json").read_text())
    failed = {"status": "failed", "error": "RuntimeError: no C compiler", "failed_in_round": 0}
    report["generate"]["runners"]["torch-compile"] = failed
    invert, generate = report["invert"], report["generate"]
    assert "generate_torch-compile_e2e_speedup_vs_diffusers" not in ratios(invert, generate, [])
    achieved = achieved_tflops(invert, generate, report["flops"])
    rows = utilization(achieved, {"fp32": Peak(0.1, "--peak-tflops"), "bf16": Peak(1, "x")})
    assert "generate/torch" in rows and "generate/torch-compile" not in rows
    assert stages(generate, tmp_path / "stages.png").stat().st_size > 0
    write_report(report, tmp_path)
    assert "failed: RuntimeError: no C compiler" in (tmp_path / "report.md").read_text()
