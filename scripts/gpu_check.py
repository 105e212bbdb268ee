"""The prepared GPU check: one run on an NVIDIA machine, results saved as JSON (under 8 minutes).

On ``sd15-shape`` (SD 1.5's exact configs, random weights) with CUDA, most valuable first:

1. ``generate_batch1``: one image per request at 512×512, 50 steps, bf16, channels-last:
   diffusers' pipeline over the same modules, and our ``torch`` backend eager, with
   ``torch.compile``, with CUDA graphs, and with both; per runner the stage times, the first
   run's time (compilation, capture), peak CUDA memory (torch's allocator, and the whole GPU's,
   coarse), the largest pixel difference to our eager runner and to diffusers, and one UNet
   call against eager (``textinv bench generate``); a runner that fails has its error as its
   row and the others go on;
2. ``invert``: the trainer's steps/s and peak CUDA memory at 512 px, bf16, batch 4, against the
   reference method (diffusers' example, step for step), and the time to 1000 steps, estimated
   (``textinv bench invert``);
3. ``pytest_gpu``: ``pytest tests/gpu``, with the time left as its timeout (pytest-timeout's
   deadlines 10 s before it, so the JUnit counts are written and kept even when it fails);
   every test skipped on a GPU machine is a failure;
4. ``generate_batch4``: as 1, four images per request, on the same loaded pipelines;
5. ``tensorrt``: engines built here and the ``tensorrt`` backend, where TensorRT is installed.

Before anything, the installed protobuf and grpcio are checked against what the gRPC stubs
were generated for (``gpu_check_preflight``; exit 2 if outside it, naming the wheel to carry).
``results.json`` is rewritten (atomically) before and after every phase, so a run cut short
keeps what it measured; SIGINT (what ``timeout --signal=INT`` sends) and SIGTERM mark the
running phase "interrupted" with its time, and the run exits 128 + the signal's number (130,
143; ``scripts/gpu_check.sh`` passes it through: ``timeout --preserve-status``). A phase that
cannot finish in the time left is skipped with the reason. Exit 0: every phase ok or skipped;
1: a phase failed.

``--dry-run`` takes the same path on the CPU with the tiny model, a few steps, fp32, batches of
1 and 2 images and ``torch.compile``'s "eager" backend (dynamo only); CUDA graphs and TensorRT
are skipped there with the reason, and pytest runs with CUDA hidden (``CUDA_VISIBLE_DEVICES``
empty), so a machine's GPU is never used. Run it through ``scripts/gpu_check.sh``, which
installs missing wheels first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.gpu_check_phases import (  # noqa: E402  (the checkout first on the path)
    INVERT_NEED_S,
    TESTS_NEED_S,
    CheckPlan,
    GenerateCheck,
    PhaseFailure,
    check_invert,
    check_tensorrt,
    check_tests,
    tensorrt_need_s,
)
from scripts.gpu_check_preflight import preflight_problem  # noqa: E402

BUDGET_S = 450.0  # of the 8 minutes (scripts/gpu_check.sh's timeout: 470 s)
EXIT_FAILED, EXIT_PREFLIGHT = 1, 2
SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[], Any]
    need_s: Callable[[], float]  # the time it needs to finish; skipped, with the reason, if less


class Results:
    """The results file's contents; ``save`` rewrites it atomically, signals held off."""

    def __init__(self, path: Path, started: float) -> None:
        self.path, self.started = path, started
        self.data: dict[str, Any] = {"status": "running", "phases": {}}

    @property
    def phases(self) -> dict[str, dict[str, Any]]:
        return self.data["phases"]  # type: ignore[no-any-return]

    def save(self) -> None:
        from textinv.fileio import atomic_write_text

        self.data["wall_s"] = time.perf_counter() - self.started
        text = json.dumps(self.data, indent=2, default=str) + "\n"
        with _signals_held():  # a signal now waits until the file is whole
            atomic_write_text(self.path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="results folder")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop new phases after")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest tests/gpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = Results(args.out / "results.json", started)
    results.data.update(dry_run=args.dry_run, budget_s=args.budget_s)
    # 1. Preflight: the stubs must import with this protobuf and grpcio, or nothing else is
    # worth running.
    problem = preflight_problem()
    if problem is not None:
        results.data.update(status="preflight failed", preflight=problem)
        results.save()
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_PREFLIGHT
    # 2. The phases, the results file rewritten around each; a signal ends the run cleanly.
    for number in SIGNALS:
        signal.signal(number, _raise_interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="textinv-gpu-check-") as scratch:
            run_check(args, results, Path(scratch), started)
        _interrupt_if_arrived()
        results.data["status"] = "complete"
    except KeyboardInterrupt as interrupt:
        for number in SIGNALS:  # a second signal must not cut the last write short
            signal.signal(number, signal.SIG_IGN)
        _record_interrupt(results, str(interrupt) or "SIGINT")
    results.save()
    for line in _summary(results.data):
        print(line)
    print(f"wrote {results.path} ({results.data['wall_s']:.0f} s)")
    return _exit_code(results.data)


def run_check(args: argparse.Namespace, results: Results, scratch: Path, started: float) -> None:
    # Planning builds the dry run's model (imports, and seconds on a slow CPU): a phase of its
    # own, and the first thing done, so that a signal during it is recorded like any other.
    record: dict[str, Any] = {"status": "running"}
    results.phases["plan"] = record
    done = run_phase(lambda: _plan(args.dry_run, scratch), record, before=results.save)
    if done["status"] != "ok":
        results.phases["plan"] = done
        raise RuntimeError(f"planning the check failed: {done['error']}")
    plan: CheckPlan = done["result"]
    results.phases["plan"] = {**done, "result": asdict(plan)}  # JSON, like the other phases'
    from textinv.cli.bench.report_machine import machine_info, versions  # imports torch: slow

    results.data.update(plan=asdict(plan), machine=machine_info(plan.device), versions=versions())

    def left() -> float:
        return float(args.budget_s - (time.perf_counter() - started))

    with contextlib.ExitStack() as stack:  # the generate bench's pipelines, across its phases
        run_phases(phases(plan, args, scratch, stack, left), results, left)


def phases(
    plan: CheckPlan,
    args: argparse.Namespace,
    scratch: Path,
    stack: contextlib.ExitStack,
    left: Callable[[], float],
) -> list[Phase]:
    """In order of value (estimates: ``gpu_check_phases``'s docstring)."""
    generate = GenerateCheck(plan, stack)
    (first, first_repeats), *later = plan.batches
    items = [
        Phase(
            f"generate_batch{first}",
            partial(generate.batch, first, first_repeats),
            partial(generate.need_s, first, first_repeats),
        ),
        Phase("invert", lambda: check_invert(plan, left()), lambda: INVERT_NEED_S),
    ]
    if not args.skip_tests:
        gpu = not args.dry_run  # all skipped fails on a GPU machine only; a dry run hides CUDA
        tests = Phase(
            "pytest_gpu", lambda: check_tests(args.out, left(), gpu=gpu), lambda: TESTS_NEED_S
        )
        items.append(tests)
    for images, repeats in later:
        batch = partial(generate.batch, images, repeats)
        items.append(
            Phase(f"generate_batch{images}", batch, partial(generate.need_s, images, repeats))
        )
    items.append(Phase("tensorrt", lambda: check_tensorrt(plan, scratch), tensorrt_need_s))
    return items


def run_phases(items: list[Phase], results: Results, left: Callable[[], float]) -> None:
    """Each phase in turn, the results file saved before and after it."""
    for phase in items:
        results.phases[phase.name] = {"status": "pending"}
    results.save()
    for phase in items:
        _interrupt_if_arrived()
        need, have = phase.need_s(), left()
        if have < need:
            reason = f"{max(have, 0):.0f} s of the budget left; this phase needs about {need:.0f} s"
            results.phases[phase.name] = {"status": "skipped", "reason": reason}
        else:
            print(f"gpu check: {phase.name} ({have:.0f} s left) ...", flush=True)
            record = results.phases[phase.name] = {"status": "running"}
            # A signal held off while "running" is written arrives as the write ends: inside
            # run_phase, so it is this phase's interrupt.
            results.phases[phase.name] = run_phase(phase.run, record, before=results.save)
        results.save()


def run_phase(
    phase: Callable[[], Any], record: dict[str, Any], before: Callable[[], None] | None = None
) -> dict[str, Any]:
    """A phase's result, or its error: one failing phase never loses the others' numbers. On a
    signal, ``record`` (the phase's entry) says "interrupted" and the interrupt goes on;
    ``before`` (saving that the phase runs) is inside the same guard."""
    begun = time.perf_counter()
    try:
        if before is not None:
            before()
        outcome = phase()
        _interrupt_if_arrived()  # a signal the phase's own code swallowed
    except KeyboardInterrupt as interrupt:
        record.update(interrupted(str(interrupt) or "SIGINT", begun))
        raise
    except Exception as error:  # recorded in the JSON; the run goes on
        if _arrived:  # the signal surfaced as another error (code it hit wrapped it)
            record.update(interrupted(_arrived[0], begun), error=f"{type(error).__name__}: {error}")
            raise KeyboardInterrupt(_arrived[0]) from error
        failed = {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
            "seconds": time.perf_counter() - begun,
        }
        if isinstance(error, PhaseFailure):  # what it measured before it failed
            failed["result"] = error.result
        return failed
    if isinstance(outcome, dict) and outcome.get("status") == "skipped":
        return outcome
    return {"status": "ok", "seconds": time.perf_counter() - begun, "result": outcome}


def interrupted(signal_name: str, begun: float) -> dict[str, Any]:
    """A phase's record when a signal ended it."""
    return {"status": "interrupted", "signal": signal_name, "seconds": time.perf_counter() - begun}


def _plan(dry_run: bool, scratch: Path) -> CheckPlan:
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --dry-run on a CPU machine")
        return CheckPlan.full()
    from textinv.testing import build_tiny_model

    return CheckPlan.dry_run(str(build_tiny_model(scratch / "tiny-sd")))


# -- signals ------------------------------------------------------------------------------------


# The signal that arrived, kept beside the KeyboardInterrupt the handler raises: Python swallows
# (prints) an exception raised inside a weakref callback or ``__del__``, which is where a signal
# lands now and then (dynamo's weak dictionaries), so the phases also look here.
_arrived: list[str] = []


def _raise_interrupt(number: int, _frame: object) -> None:
    _arrived.append(signal.Signals(number).name)
    raise KeyboardInterrupt(_arrived[-1])


def _interrupt_if_arrived() -> None:
    """Raise the interrupt a swallowed signal left behind, if any."""
    if _arrived:
        raise KeyboardInterrupt(_arrived[0])


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (POSIX) while the block runs, then arrive."""
    held = set(SIGNALS)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _record_interrupt(results: Results, name: str) -> None:
    """The run's status, and every phase that had not started: skipped for the signal."""
    results.data.update(status="interrupted", signal=name)
    for record in results.phases.values():
        if record["status"] in ("pending", "running"):
            record.clear()
            record.update(status="skipped", reason=f"the run was interrupted ({name})")


def _exit_code(data: dict[str, Any]) -> int:
    if data["status"] == "interrupted":
        return 128 + int(signal.Signals[data["signal"]])
    failed = [name for name, phase in data["phases"].items() if phase["status"] == "failed"]
    return EXIT_FAILED if failed else 0


# -- the summary --------------------------------------------------------------------------------


def _summary(data: dict[str, Any]) -> list[str]:
    lines = [f"gpu check ({'dry run, CPU' if data.get('dry_run') else 'CUDA'}): {data['status']}"]
    for name, phase in data["phases"].items():
        detail = phase.get("reason") or phase.get("error") or f"{phase.get('seconds', 0):.0f} s"
        lines.append(f"  {name}: {phase['status']} ({detail})")
    for name, phase in data["phases"].items():
        result = phase.get("result")
        if phase["status"] != "ok" or not isinstance(result, dict):
            continue
        if name.startswith("generate_batch"):
            lines += _generate_lines(result)
        elif name == "invert":
            lines += _invert_lines(result)
        elif name == "pytest_gpu":
            lines.append(f"  pytest tests/gpu: {result['summary']}")
    return lines


def _generate_lines(result: dict[str, Any]) -> list[str]:
    from textinv.cli.bench.generate_table import cell

    lines = [f"  {result['num_images']} image(s) per request:"]
    for name, row in result["runners"].items():
        if row["status"] != "ok":
            lines.append(f"    {name}: failed in round {row['failed_in_round']}: {row['error']}")
            continue
        step_ms = row["unet_step"]["median_ms"]
        lines.append(
            f"    {name}: e2e {row['e2e']['median_ms']:.0f} ms, UNet step {step_ms:.2f} ms "
            f"({1000 / step_ms:.1f} it/s), ×{cell(row['speedup_e2e'], '.2f')} diffusers, first "
            f"run {row['first_run_ms']:.0f} ms, peak {cell(row['peak_cuda_mib'])} MiB (GPU "
            f"{cell(row['device_used_mib'])}), max Δpx vs torch {row['max_pixel_diff_vs_torch']}"
            f", vs diffusers {row['max_pixel_diff_vs_diffusers']}, UNet call vs eager "
            f"{cell(row['unet_call_relative_error_vs_eager'], '.1e')}"
        )
    return lines


def _invert_lines(result: dict[str, Any]) -> list[str]:
    ours, ref = result["textinv"], result["reference"]
    estimate = result["estimated_1000_steps_s"]
    peaks = [f"{r['peak_cuda_mib']:.0f}" if "peak_cuda_mib" in r else "-" for r in (ours, ref)]
    return [
        f"  invert: textinv {ours['steps_per_s']:.2f} steps/s, reference "
        f"{ref['steps_per_s']:.2f}, speedup {result['speedup']:.2f}×; peak CUDA MiB "
        f"{peaks[0]} vs {peaks[1]}; 1000 steps (estimate) {estimate['textinv']:.0f} s vs "
        f"{estimate['reference']:.0f} s"
    ]


if __name__ == "__main__":
    sys.exit(main())
