"""The GPU check's pytest phase on real pytest runs, and how later batches are sized."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.gpu_check_phases import (
    GENERATE_FIRST_NEED_S,
    batch_need_s,
    check_tests,
    junit_counts,
    pytest_problem,
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
SLOW = "import time\n\ndef test_slow():\n    time.sleep(60)\n"


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
def test_the_phase_stops_at_its_timeout(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="did not finish in 3 s"):
        check_tests(tmp_path, 3, gpu=True, tests=(write_tests(tmp_path / "t", SLOW),))


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
    rows = {
        "diffusers": {"e2e": {"median_ms": 1000.0}, "warmup_cost_ms": 200.0},
        "torch-compile": {"e2e": {"median_ms": 600.0}, "warmup_cost_ms": 90_000.0},
        "torch": {"e2e": {"median_ms": 900.0}, "warmup_cost_ms": -5.0},
    }
    # 3 rounds of 4× the images: 3 × 4 × 2.5 s, plus the largest warm-up cost (a recompile).
    assert batch_need_s(rows, 4.0, 3) == pytest.approx(30.0 + 90.0)
    assert batch_need_s(None, 4.0, 3) == GENERATE_FIRST_NEED_S
