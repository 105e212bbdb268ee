"""The GPU check's phases (``scripts/gpu_check.py`` runs them in order, each within the budget).

Estimates for ``CheckPlan.full()`` on one H200, none measured yet (the first GPU run's
``results.json`` tells, and ``batch_need_s`` sizes the later batches from the first batch's
figures):

- sd15-shape is built on the CPU in about 10 s and moved to the GPU in bf16;
- generation at 512 px, 50 steps, 1 image: about 1 s in eager (diffusers alike), so a round of
  the five runners takes about 5 s and 1 warm-up + 3 measured rounds about 20 s; inductor's cold
  compile of the SD UNet takes 1-2 min, the second compiled runner reuses inductor's FX graph
  cache (about 20 s), and each CUDA graph capture takes a second or two: about 150 s in all;
- 4 images per request: about 3 s a run, so 1 + 2 rounds about 45 s, plus up to another cold
  compile where the compiled UNet specializes on the batch: about 150 s;
- invert: two workers, each importing torch and building sd15-shape (about 20 s), then 13 steps
  at batch 4 (well under a second each): about 60 s;
- pytest tests/gpu: the tiny model, its compile test the longest (20-30 s): about 60 s.

Together with start-up, about 430 s of the 450 s budget, most valuable first (see
``gpu_check.phases``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent

if TYPE_CHECKING:
    from textinv.cli.bench.generate import GenerateBench, GenerateBenchSettings
    from textinv_export.choices import Target
    from textinv_export.config import ExportConfig

GENERATE_FIRST_NEED_S = 150.0  # the first batch, compilation included (see above)
INVERT_NEED_S = 60.0
TESTS_NEED_S = 30.0  # the least worth starting; its timeout is then all the time left
STOP_MARGIN_S = 10.0  # pytest's own deadline this much before the phase's (its JUnit report)
GRACE_S = 5.0  # between SIGINT and SIGKILL when pytest must be stopped
TENSORRT_NEED_S = 300.0  # an SD 1.5 export + engine build
# Published figures to read ours against (not measured here).
ANCHORS = {"tensorrt_sd15_512_50_steps_a100_s": 0.82, "stable_fast_h100_it_per_s": 104.6}


@dataclass(frozen=True)
class CheckPlan:
    """What one check runs; ``full()`` on a GPU, ``dry_run()`` on the CPU."""

    model: str
    device: str
    invert_resolution: int
    invert_batch: int
    invert_steps: int
    invert_warmup: int
    precision: str  # a Precision as the command line spells it: fp32, bf16
    steps: int
    resolution: int
    batches: tuple[tuple[int, int], ...]  # (images per request, measured rounds), in order
    warmup: int  # unmeasured rounds before each batch's
    compile_backend: str
    threads: int  # torch CPU threads; 0: torch's default

    @classmethod
    def full(cls) -> CheckPlan:
        return cls(
            "sd15-shape", "cuda", 512, 4, 10, 3, "bf16", 50, 512, ((1, 3), (4, 2)), 1,
            "inductor", 0,
        )  # fmt: skip

    @classmethod
    def dry_run(cls, tiny_model: str) -> CheckPlan:
        # One thread: CPU machines that run this are shared (and it is a path check, not a bench).
        return cls(tiny_model, "cpu", 32, 1, 1, 1, "fp32", 2, 32, ((1, 1), (2, 1)), 1, "eager", 1)

    @property
    def images(self) -> tuple[int, ...]:
        return tuple(images for images, _ in self.batches)


# -- generation ---------------------------------------------------------------------------------


def generate_settings(plan: CheckPlan, engines: Path | None = None) -> GenerateBenchSettings:
    """All five runners (diffusers; ours eager, compiled, CUDA-graphed, both), or with
    ``engines`` diffusers, ours eager and the tensorrt backend."""
    from textinv.cli.bench.generate import VARIANTS, GenerateBenchSettings
    from textinv_client.choices import Precision
    from textinv_server.backends import BackendName

    torch_only = engines is None
    return GenerateBenchSettings(
        model=plan.model,
        engines=engines,
        backends=(BackendName.TORCH,) if torch_only else (BackendName.TORCH, BackendName.TENSORRT),
        steps=plan.steps,
        resolution=plan.resolution,
        warmup=plan.warmup,
        repeats=plan.batches[0][1],
        threads=plan.threads,
        device=plan.device,
        weights=Precision.BF16 if Precision.parse(plan.precision) is Precision.BF16 else None,
        channels_last=True,
        num_images=plan.images,
        compile_backend=plan.compile_backend,
        torch_variants=tuple(VARIANTS.values()) if torch_only else (VARIANTS["eager"],),
        concepts=False,
    )


class GenerateCheck:
    """The generate bench's pipelines, loaded by the first batch's phase and kept for the later
    ones (compiled code and captured graphs stay warm) until ``stack`` closes."""

    def __init__(self, plan: CheckPlan, stack: contextlib.ExitStack) -> None:
        self.plan, self.stack = plan, stack
        self.bench: GenerateBench | None = None

    def batch(self, images: int, repeats: int) -> dict[str, Any]:
        from textinv.cli.bench.generate import open_generate_bench

        if self.bench is None:
            self.bench = self.stack.enter_context(open_generate_bench(generate_settings(self.plan)))
        rows = self.bench.measure(images, repeats)
        report = self.bench.report()
        return {
            **rows,
            "notes": report["notes"],
            "settings": report["settings"],
            "anchors": ANCHORS,
        }

    def need_s(self, images: int, repeats: int) -> float:
        first_images = self.plan.batches[0][0]
        measured = None if self.bench is None else self.bench.batches.get(str(first_images))
        rows = None if measured is None else measured["runners"]
        return batch_need_s(rows, images / first_images, self.plan.warmup + repeats)


def batch_need_s(rows: Mapping[str, Mapping[str, Any]] | None, scale: float, rounds: int) -> float:
    """Seconds a round-robin of ``rounds`` at ``scale`` times the images should take, from a
    measured batch's ``rows``: each runner's median run scaled (compute grows about linearly
    with the images), plus the largest warm-up cost (a new shape may compile again; the other
    compiled runner then hits inductor's cache). Unmeasured: ``GENERATE_FIRST_NEED_S``."""
    from textinv.cli.bench.generate_table import measured_rows

    rows = measured_rows(rows or {})
    if not rows:  # unmeasured, or every runner failed
        return GENERATE_FIRST_NEED_S
    round_s = sum(row["e2e"]["median_ms"] for row in rows.values()) * scale / 1000
    warmup_s = max(max(row["warmup_cost_ms"], 0.0) for row in rows.values()) / 1000
    return rounds * round_s + warmup_s


# -- inversion ----------------------------------------------------------------------------------


def check_invert(plan: CheckPlan, timeout_s: float) -> dict[str, Any]:
    from textinv.cli.bench.invert import InvertBenchSettings, measure_invert
    from textinv_client.choices import Precision

    settings = InvertBenchSettings(
        model=plan.model,
        resolution=plan.invert_resolution,
        batch_size=plan.invert_batch,
        steps=plan.invert_steps,
        warmup=plan.invert_warmup,
        device=plan.device,
        precision=Precision.parse(plan.precision),
        threads=plan.threads,
    )
    return measure_invert(settings, timeout_s=timeout_s)


# -- TensorRT -----------------------------------------------------------------------------------


def check_export_config(
    out: Path, resolution: int, images: Sequence[int], target: Target | None = None
) -> ExportConfig:
    """The TensorRT phase's export (``target`` default: tensorrt): fp16 text encoder, UNet and
    VAE decoder for batches of ``min(images)`` to ``max(images)`` images at one side. The batch
    range must hold the exporter's trace batch (``onnx_export.TRACE_BATCH``, 2) too;
    tests/unit/test_gpu_check_export.py exports the tiny model with these settings."""
    from textinv_export.choices import Target
    from textinv_export.config import ExportConfig
    from textinv_export.specs import Component, Precision, Range, ShapeRanges

    return ExportConfig(
        out,
        target=target or Target.TENSORRT,
        precision=Precision.FP16,
        ranges=ShapeRanges(
            Range(min(images), min(images), max(images)), Range(resolution, resolution, resolution)
        ),
        components=(Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER),
    )


def tensorrt_need_s() -> float:
    """Nothing without TensorRT (the phase then says why it is skipped), else a build's time."""
    from textinv_export.tensorrt import tensorrt_missing

    return 0.0 if tensorrt_missing() is not None else TENSORRT_NEED_S


def check_tensorrt(plan: CheckPlan, scratch: Path) -> dict[str, Any]:
    """Engines for this GPU, then the tensorrt backend against ours eager and diffusers."""
    from textinv.cli.bench.generate import measure_generate
    from textinv.testing import load_benchmark_model
    from textinv_export.exporter import export_model
    from textinv_export.tensorrt import tensorrt_missing

    missing = tensorrt_missing()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    started = time.perf_counter()
    config = check_export_config(scratch / "engines", plan.resolution, plan.images)
    export_model(load_benchmark_model(plan.model), config, progress=lambda _: None)
    build_s = time.perf_counter() - started
    report = measure_generate(generate_settings(plan, engines=config.out))
    return {"export_and_build_s": build_s, "generate": report}


# -- pytest tests/gpu ---------------------------------------------------------------------------


class PhaseFailure(RuntimeError):
    """A phase failed after measuring something: ``result`` goes into its record (gpu_check)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


def check_tests(
    out: Path, timeout_s: float, *, gpu: bool, tests: Sequence[str] = ("tests/gpu",)
) -> dict[str, Any]:
    """``pytest tests/gpu`` within ``timeout_s``. ``gpu``: on a GPU machine every test skipped
    is a failure (a skip condition is wrong, or CUDA is not what the tests see); without it (a
    dry run) CUDA is hidden from pytest. A failure raises ``PhaseFailure`` with the counts
    pytest wrote, so they stay in the results."""
    junit = (out / "pytest-gpu.xml").resolve()  # absolute: pytest runs in the checkout
    junit.unlink(missing_ok=True)  # an earlier run's report is not this one's
    deadline_s = pytest_deadline_s(timeout_s)
    command = [sys.executable, "-m", "pytest", "-q", *tests, "-p", "no:cacheprovider"]
    command += ["--junitxml", str(junit), *pytest_timeout_flags(deadline_s)]
    # A dry run must not touch a GPU the machine may have: tests/gpu would run for real there
    # (minutes of the dry run's time, and not the "all skipped" a dry run expects).
    env = None if gpu else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    exit_code, output = run_bounded(command, timeout_s, env=env)
    tail = _tail(output)
    counts = junit_counts(junit) if junit.is_file() else None
    summary = tail.splitlines()[-1] if tail else ""
    result = {"exit_code": exit_code, "counts": counts, "summary": summary}
    if exit_code is None:
        problem: str | None = f"pytest did not finish in {timeout_s:.0f} s (the time left)"
    else:
        problem = pytest_problem(exit_code, counts, gpu=gpu)
        if problem is not None and "session-timeout" in output:
            problem += f" (its session deadline, {deadline_s:.0f} s, passed)"
    if problem is not None:
        raise PhaseFailure(f"{problem}:\n{tail}", result)
    return result


def pytest_deadline_s(timeout_s: float) -> float:
    """pytest's own deadline (per test, and for starting another test): ``STOP_MARGIN_S`` before
    the phase's, so that it stops itself and writes its JUnit report before it is stopped."""
    return max(timeout_s - STOP_MARGIN_S, timeout_s / 2)


def pytest_timeout_flags(deadline_s: float) -> list[str]:
    """pytest-timeout's flags for ``deadline_s``, as far as the installed version has them:
    ``--timeout`` fails a test that runs past it (the run goes on), and ``--session-timeout``
    (2.3+) starts no test past it; none without pytest-timeout."""
    try:
        installed = importlib.metadata.version("pytest-timeout")
    except importlib.metadata.PackageNotFoundError:
        return []
    seconds = f"{max(deadline_s, 1.0):.1f}"  # 0 would mean no timeout
    flags = ["--timeout", seconds]
    major, minor = (int(part) for part in installed.split(".")[:2])
    if (major, minor) >= (2, 3):
        flags += ["--session-timeout", seconds]
    return flags


def run_bounded(
    command: list[str],
    timeout_s: float,
    *,
    env: Mapping[str, str] | None = None,
    grace_s: float = GRACE_S,
) -> tuple[int | None, str]:
    """Run ``command`` in the checkout for at most ``timeout_s``: its exit code and output
    (stdout and stderr together), or None and the output so far when it had to be stopped.
    Stopped with SIGINT first (pytest then still writes its JUnit report), SIGKILL after
    ``grace_s``; an interrupt here (the time limit's SIGINT) stops it the same way."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        return None, _stop(process, grace_s)
    except BaseException:
        _stop(process, grace_s)
        raise


def _stop(process: subprocess.Popen[str], grace_s: float) -> str:
    process.send_signal(signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output


def junit_counts(path: Path) -> dict[str, Any]:
    """Totals over a JUnit XML report's test suites, and the distinct skip reasons."""
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts: dict[str, Any] = {
        key: sum(int(suite.get(key, 0)) for suite in suites)
        for key in ("tests", "failures", "errors", "skipped")
    }
    reasons = {skip.get("message", "") for skip in root.iter("skipped")}
    counts["skip_reasons"] = sorted(reasons)[:10]
    return counts


def pytest_problem(exit_code: int, counts: Mapping[str, Any] | None, *, gpu: bool) -> str | None:
    """What is wrong with a pytest run, or None. Exit 5 is "no tests collected" (also every
    test deselected); every test skipped exits 0, so the JUnit counts tell that."""
    if exit_code not in (0, 5):
        return f"pytest exited {exit_code}"
    all_skipped = exit_code == 5 or (
        counts is not None and counts["tests"] > 0 and counts["tests"] == counts["skipped"]
    )
    if gpu and all_skipped:
        reasons = "; ".join(counts["skip_reasons"]) if counts else "none collected"
        return f"every test was skipped on a machine with a GPU ({reasons})"
    return None


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
