"""The GPU check's pytest phase on real pytest runs, and how later batches are sized."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.gpu_check_phases import (
    GENERATE_FIRST_NEED_S,
    STOP_MARGIN_S,
    PhaseFailure,
    batch_need_s,
    check_tests,
    junit_counts,
    pytest_deadline_s,
    pytest_problem,
    pytest_timeout_flags,
    run_bounded,
)

SKIPPED = """
import pytest

@pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA")
def test_a():
    pass

@pytest.mark.skip(reason="needs tensorrt")
def test_b():
    pass
"""
PASSING = SKIPPED + "\ndef test_c():\n    pass\n"
# One test that passes, then one that would outlive the phase.
SLOW = "import time\n\ndef test_fast():\n    pass\n\ndef test_slow():\n    time.sleep(600)\n"
CUDA_HIDDEN = """
import os

def test_cuda_is_hidden():
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
"""


def write_tests(folder: Path, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_phase_sample.py").write_text(text)
    return str(folder)


@pytest.mark.slow
def test_all_skipped_fails_on_a_gpu_machine_and_passes_a_dry_run(tmp_path) -> None:
    tests = write_tests(tmp_path / "t", SKIPPED)
    with pytest.raises(RuntimeError, match="every test was skipped on a machine with a GPU"):
        check_tests(tmp_path, 120, gpu=True, tests=(tests,))
    result = check_tests(tmp_path, 120, gpu=False, tests=(tests,))
    assert result["exit_code"] == 0  # pytest itself calls all-skipped a success
    assert result["counts"]["tests"] == result["counts"]["skipped"] == 2
    assert result["counts"]["skip_reasons"] == ["needs an NVIDIA GPU with CUDA", "needs tensorrt"]


@pytest.mark.slow
def test_some_skipped_is_fine_and_nothing_collected_is_all_skipped(tmp_path) -> None:
    result = check_tests(tmp_path, 120, gpu=True, tests=(write_tests(tmp_path / "t", PASSING),))
    assert result["counts"]["tests"] == 3 and result["counts"]["skipped"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError, match="every test was skipped"):
        check_tests(tmp_path, 120, gpu=True, tests=(str(empty),))  # pytest exits 5
    assert check_tests(tmp_path, 120, gpu=False, tests=(str(empty),))["exit_code"] == 5


@pytest.mark.slow
def test_the_phase_stops_at_its_timeout_and_keeps_the_counts(tmp_path) -> None:
    # pytest-timeout fails the slow test at the deadline, 10 s before the phase's end; were it
    # missing, the phase's SIGINT would stop pytest, which still writes its report.
    with pytest.raises(PhaseFailure) as failure:
        check_tests(tmp_path, 30, gpu=True, tests=(write_tests(tmp_path / "t", SLOW),))
    counts = failure.value.result["counts"]
    assert counts is not None and counts["tests"] >= 1  # test_fast, at least, is in it
    assert (tmp_path / "pytest-gpu.xml").is_file()


@pytest.mark.slow
def test_a_dry_run_hides_cuda_from_pytest_and_a_failure_keeps_its_counts(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tests = (write_tests(tmp_path / "t", CUDA_HIDDEN),)
    result = check_tests(tmp_path, 120, gpu=False, tests=tests)
    assert result["counts"]["tests"] == 1 and result["counts"]["failures"] == 0
    with pytest.raises(PhaseFailure, match="pytest exited 1") as failure:
        check_tests(tmp_path, 120, gpu=True, tests=tests)  # the GPU run sees the machine's CUDA
    assert failure.value.result["exit_code"] == 1
    assert failure.value.result["counts"]["failures"] == 1


@pytest.mark.slow
def test_a_relative_results_folder_is_where_the_junit_report_is_read(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout, where pytest runs
    tests = (write_tests(tmp_path / "t", PASSING),)
    result = check_tests(Path("out"), 120, gpu=False, tests=tests)
    assert result["counts"]["tests"] == 3
    assert (tmp_path / "out" / "pytest-gpu.xml").is_file()


INTERRUPTIBLE = """
import sys, time
print("started", flush=True)
try:
    time.sleep(600)
except KeyboardInterrupt:
    print("interrupted: writing the report", flush=True)
    sys.exit(3)
"""
STUBBORN = """
import signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("started", flush=True)
time.sleep(600)
"""


def test_a_command_past_its_time_gets_sigint_first_then_sigkill() -> None:
    code, output = run_bounded([sys.executable, "-c", INTERRUPTIBLE], 3)
    assert code is None and "interrupted: writing the report" in output
    code, output = run_bounded([sys.executable, "-c", STUBBORN], 3, grace_s=1)
    assert code is None and "started" in output
    assert run_bounded([sys.executable, "-c", "print('done')"], 60) == (0, "done\n")


def test_pytest_s_own_deadline_comes_before_the_phase_s() -> None:
    assert pytest_deadline_s(300) == 300 - STOP_MARGIN_S
    assert pytest_deadline_s(4) == 2  # never past half the time
    flags = pytest_timeout_flags(290)  # pytest-timeout 2.3+ is a dev dependency
    assert flags == ["--timeout", "290.0", "--session-timeout", "290.0"]
    assert pytest_timeout_flags(0.2)[1] == "1.0"  # 0 would mean no timeout at all


def test_pytest_problem_reads_exit_codes_and_counts() -> None:
    counts = {"tests": 2, "skipped": 2, "skip_reasons": ["no CUDA"]}
    assert pytest_problem(1, None, gpu=False) == "pytest exited 1"
    assert pytest_problem(0, counts, gpu=False) is None
    problem = pytest_problem(0, counts, gpu=True)
    assert problem is not None and "no CUDA" in problem
    assert pytest_problem(0, {**counts, "skipped": 1}, gpu=True) is None


def test_junit_counts_sum_every_suite(tmp_path) -> None:
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite tests="3" skipped="1" failures="0" errors="0">'
        '<testcase name="a"><skipped message="why"/></testcase></testsuite>'
        '<testsuite tests="2" skipped="0" failures="1" errors="0"/></testsuites>'
    )
    counts = junit_counts(report)
    assert (counts["tests"], counts["skipped"], counts["failures"]) == (5, 1, 1)
    assert counts["skip_reasons"] == ["why"]


def test_a_later_batch_is_sized_from_the_first() -> None:
    rows: dict[str, dict[str, Any]] = {
        "diffusers": {"status": "ok", "e2e": {"median_ms": 1000.0}, "warmup_cost_ms": 200.0},
        "torch-compile": {"status": "ok", "e2e": {"median_ms": 600.0}, "warmup_cost_ms": 9e4},
        "torch": {"status": "ok", "e2e": {"median_ms": 900.0}, "warmup_cost_ms": -5.0},
        "torch-cudagraph": {"status": "failed", "error": "RuntimeError: capture failed"},
    }
    # 3 rounds of 4× the images: 3 × 4 × 2.5 s, plus the largest warm-up cost (a recompile);
    # the failed runner has no times to count.
    assert batch_need_s(rows, 4.0, 3) == pytest.approx(30.0 + 90.0)
    assert batch_need_s(None, 4.0, 3) == GENERATE_FIRST_NEED_S
    assert batch_need_s({"torch": rows["torch-cudagraph"]}, 4.0, 3) == GENERATE_FIRST_NEED_S
