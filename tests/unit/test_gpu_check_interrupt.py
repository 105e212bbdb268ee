"""A GPU check cut short keeps what it measured: the results file after every phase, a signal
recorded against the phase it interrupted, and phases that do not fit the budget skipped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What scripts/gpu_check.sh puts first on the path: this checkout's packages.
PATH = os.pathsep.join(str(REPO / part) for part in ("", "export", "server", "client"))


def start_check(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": PATH, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run"]
    return subprocess.Popen(
        [*command, "--out", str(out), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_running(results: Path, phase: str, process: subprocess.Popen[str]) -> None:
    """Until the results file says ``phase`` is running (it is rewritten before each phase)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if results.is_file():
            phases = json.loads(results.read_text())["phases"]
            if phases.get(phase, {}).get("status") == "running":
                return
        time.sleep(0.05)
    output = process.communicate()[0] if process.poll() is not None else ""
    pytest.fail(f"{phase} never ran: {output[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("number", "phase"), [(signal.SIGINT, "invert"), (signal.SIGTERM, "generate_batch1")]
)
def test_a_signal_marks_its_phase_interrupted_and_keeps_the_rest(tmp_path, number, phase) -> None:
    process = start_check(tmp_path, "--skip-tests")
    results = tmp_path / "results.json"
    wait_for_running(results, phase, process)
    process.send_signal(number)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 128 + number, output[-3000:]
    saved = json.loads(results.read_text())
    name = signal.Signals(number).name
    assert saved["status"] == "interrupted" and saved["signal"] == name
    phases = saved["phases"]
    record = phases[phase]
    assert record["status"] == "interrupted" and record["signal"] == name, (record, output[-2000:])
    assert record["seconds"] > 0
    order = list(phases)
    for before in order[: order.index(phase)]:  # what ran before is kept, numbers and all
        assert phases[before]["status"] == "ok" and phases[before]["result"]
    for after in order[order.index(phase) + 1 :]:
        assert phases[after] == {"status": "skipped", "reason": f"the run was interrupted ({name})"}


@pytest.mark.slow
def test_phases_that_do_not_fit_the_budget_are_skipped_with_the_reason(tmp_path) -> None:
    process = start_check(tmp_path, "--budget-s", "20")
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["status"] == "complete"
    for name in ("generate_batch1", "invert", "generate_batch2"):  # each needs more than 20 s
        record = saved["phases"][name]
        assert record["status"] == "skipped"
        assert "s of the budget left; this phase needs about" in record["reason"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_signal_swallowed_by_a_weakref_callback_still_ends_the_phase() -> None:
    # Python prints and drops an exception raised inside a weakref callback; a signal landing
    # there (dynamo keeps weak dictionaries) must still interrupt the run.
    import weakref

    from scripts import gpu_check

    class Thing:
        pass

    def phase() -> str:
        thing = Thing()
        ref = weakref.ref(thing, lambda _: gpu_check._raise_interrupt(signal.SIGINT, None))
        del thing  # the callback runs here and its KeyboardInterrupt is swallowed
        assert ref() is None
        return "finished as if nothing happened"

    record: dict[str, object] = {}
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            gpu_check.run_phase(phase, record)
    finally:
        gpu_check._arrived.clear()
    assert record["status"] == "interrupted" and record["signal"] == "SIGINT"


def test_a_signal_that_surfaces_as_another_error_still_interrupts() -> None:
    # Code the signal lands in may wrap the KeyboardInterrupt (dynamo turns exceptions raised
    # while it compiles into its own): the phase is interrupted, not failed.
    from scripts import gpu_check

    def phase() -> None:
        try:
            gpu_check._raise_interrupt(signal.SIGTERM, None)
        except KeyboardInterrupt as interrupt:
            raise RuntimeError("compile failed") from interrupt

    record: dict[str, object] = {}
    try:
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            gpu_check.run_phase(phase, record)
    finally:
        gpu_check._arrived.clear()
    assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
    assert record["error"] == "RuntimeError: compile failed"


def test_a_signal_arriving_as_running_is_saved_is_the_phase_s() -> None:
    # save() holds signals off while it writes: one sent on seeing "running" lands at its end.
    from scripts import gpu_check

    def save() -> None:
        gpu_check._raise_interrupt(signal.SIGINT, None)

    record: dict[str, object] = {"status": "running"}
    try:
        with pytest.raises(KeyboardInterrupt):
            gpu_check.run_phase(lambda: "never runs", record, before=save)
    finally:
        gpu_check._arrived.clear()
    assert record["status"] == "interrupted" and record["signal"] == "SIGINT"
