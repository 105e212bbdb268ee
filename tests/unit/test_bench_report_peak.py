"""The report's measured peak (a GEMM microbenchmark), the clamp that keeps every fraction at
or below 1, the precision each row ran in, and the machine's instruction sets (no timings)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from textinv.cli.bench.report_machine import (
    achieved_tflops,
    machine_info,
    precision_name,
    runner_precisions,
    utilization,
)
from textinv.cli.bench.report_peak import (
    effective_peaks,
    gemm_flops,
    measure_peak,
    measure_peaks,
    time_gemm,
    torch_threads,
)
from textinv.hardware import CpuFeatures, cpu_features

TINY_SIZES = (32, 64)


@pytest.mark.parametrize("n", [16, 64, 100])
def test_gemm_flops_are_two_n_cubed_as_torch_counts_them(n: int) -> None:
    with FlopCounterMode(display=False) as counter:
        torch.matmul(torch.ones(n, n), torch.ones(n, n))
    assert gemm_flops(n) == 2 * n**3 == counter.get_total_flops()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_gemm_timing_is_positive_and_finite(precision: str) -> None:
    timing = time_gemm(64, precision, repeats=2, min_batch_s=0.001)
    assert timing.precision == precision and timing.size == 64
    assert timing.calls_per_batch >= 1 and timing.seconds_per_call > 0
    assert math.isfinite(timing.tflops) and timing.tflops > 0
    assert timing.tflops == pytest.approx(gemm_flops(64) / timing.seconds_per_call / 1e12)


def test_the_cpu_peaks_are_fp32_and_bf16_each_its_best_size() -> None:
    peaks = measure_peaks("cpu", sizes=TINY_SIZES, repeats=1)
    assert list(peaks) == ["fp32", "bf16"]
    for precision, peak in peaks.items():
        assert peak.precision == precision and peak.device == "cpu"
        assert math.isfinite(peak.tflops) and peak.tflops > 0
        assert [t.size for t in peak.timings] == list(TINY_SIZES)
        assert peak.tflops == max(t.tflops for t in peak.timings)
        assert peak.size in TINY_SIZES


def test_a_slow_size_is_the_last_one_tried() -> None:
    peak = measure_peak("fp32", "cpu", (64, 32, 128), repeats=1, max_call_s=0.0)
    assert [t.size for t in peak.timings] == [32]  # ascending, and 32 already "too slow"


def test_the_thread_count_is_set_inside_and_restored_after() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before


def test_an_achieved_figure_above_the_peak_raises_the_peak_and_says_so() -> None:
    measured = {"fp32": 1.0, "bf16": 2.0}
    achieved = {
        "generate/torch": ("fp32", 1.5),  # beats the GEMM: the sizes missed the best tiling
        "generate/diffusers": ("fp32", 0.5),
        "invert/textinv": ("bf16", 1.0),
    }
    peaks = effective_peaks(measured, achieved, "GEMM microbenchmark on cpu")
    assert peaks["fp32"].tflops == 1.5
    assert peaks["fp32"].source.startswith("max(GEMM microbenchmark on cpu")
    assert "best achieved: generate/torch" in peaks["fp32"].source
    assert (peaks["bf16"].tflops, peaks["bf16"].source) == (2.0, "GEMM microbenchmark on cpu")
    rows = utilization(achieved, peaks)
    assert all(0 < row["fraction_of_peak"] <= 1 for row in rows.values())
    assert rows["generate/torch"]["fraction_of_peak"] == 1.0
    assert rows["generate/diffusers"]["fraction_of_peak"] == pytest.approx(0.5 / 1.5)
    assert rows["invert/textinv"]["fraction_of_peak"] == pytest.approx(0.5)  # bf16's own peak
    assert rows["invert/textinv"]["peak_source"] == "GEMM microbenchmark on cpu"


def test_a_precision_that_was_not_measured_gets_its_best_row_labelled() -> None:
    peaks = effective_peaks({"fp32": 1.0}, {"generate/torch": ("fp16", 0.3)}, "--peak-tflops")
    assert peaks["fp16"].tflops == 0.3 and peaks["fp16"].source.startswith("best achieved")
    assert peaks["fp32"].tflops == 1.0


def _results(generate_precision: object, invert_precision: object) -> tuple[dict, dict]:
    """A generate and an invert result as the benches return them, reduced to what is read."""
    stats = {"median_ms": 100.0}
    generate = {
        "settings": {"weights": "torch.float32"},
        "runners": {
            "torch": {"status": "ok", "unet_step": stats},
            "torch-compile": {"status": "failed", "error": "RuntimeError: no compiler"},
            "diffusers": {"status": "ok", "unet_step": stats},
        },
    }
    invert = {"settings": {"precision": "auto"}, "textinv": {"median_step_s": 2.0},
              "reference": {"median_step_s": 4.0}}  # fmt: skip
    if generate_precision is not None:
        generate["precision"] = generate_precision
    if invert_precision is not None:
        invert["precision"] = invert_precision
    return invert, generate


def test_each_row_ran_in_the_precision_its_result_names() -> None:
    stated = {"ours": "bf16", "reason": "auto: the CPU has AMX-BF16", "diffusers": "fp32"}
    invert, generate = _results(stated, "bf16")
    assert runner_precisions(invert, generate) == {
        "generate/torch": "bf16",
        "generate/diffusers": "fp32",
        "invert/textinv": "bf16",
        "invert/reference": "bf16",
    }
    flops = {"unet_flops_per_denoising_step": 10**11, "unet_flops_per_train_step": 4 * 10**12}
    achieved = achieved_tflops(invert, generate, flops)
    assert achieved["generate/torch"] == ("bf16", pytest.approx(1.0))  # 1e11 FLOP in 0.1 s
    assert achieved["invert/reference"] == ("bf16", pytest.approx(1.0))  # 4e12 FLOP in 4 s


def test_results_that_do_not_name_a_precision_count_as_fp32() -> None:
    invert, generate = _results(None, None)  # before the benches report their precision
    assert set(runner_precisions(invert, generate).values()) == {"fp32"}


@pytest.mark.parametrize(
    ("value", "name"),
    [("bf16", "bf16"), ("torch.bfloat16", "bf16"), ("fp16", "fp16"), ("torch.float16", "fp16"),
     ("fp32", "fp32"), ("torch.float32", "fp32"), ("auto", "fp32"), (None, "fp32")],
)  # fmt: skip
def test_precision_names(value: object, name: str) -> None:
    assert precision_name(value) == name


def test_machine_info_names_the_instruction_sets_it_was_given() -> None:
    amx = CpuFeatures("Fake Xeon", frozenset({"avx2", "avx512f", "amx_bf16"}), "AVX512")
    info = machine_info("cpu", amx)
    assert info["cpu"] == "Fake Xeon"
    assert info["cpu_instruction_sets"] == ["AVX2", "AVX-512", "AMX-BF16"]
    assert info["cpu_fast_bf16"] is True and info["torch_cpu_capability"] == "AVX512"
    assert info["auto_precision"].startswith("bf16")
    plain = machine_info("cpu", CpuFeatures("Fake EPYC", frozenset({"avx2"}), "AVX2"))
    assert plain["cpu_instruction_sets"] == ["AVX2"] and plain["cpu_fast_bf16"] is False
    assert plain["auto_precision"].startswith("fp32")


def test_machine_info_defaults_to_this_machines_features() -> None:
    here = cpu_features()
    info = machine_info("cpu")
    assert info["cpu_instruction_sets"] == list(here.instruction_sets)
    assert info["torch_cpu_capability"] == here.torch_capability
