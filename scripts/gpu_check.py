"""The prepared GPU check: one run on an NVIDIA machine, results saved as JSON (under 8 minutes).

On ``sd15-shape`` (SD 1.5's exact configs, random weights) with CUDA:

1. the trainer's steps/s at 512 px, bf16, batch 4, against the reference method (diffusers'
   example, step for step): ``textinv.cli.bench.invert.measure_invert``;
2. generation at 512×512, 50 steps, on the ``torch`` backend (bf16 weights, channels-last, SDPA),
   eager, ``torch.compile`` and CUDA graphs, with per-stage times, against diffusers' pipeline
   over the same modules: ``textinv.cli.bench.generate.measure_generate``; and the ``tensorrt``
   backend too where TensorRT is installed (engines built here, if the time budget allows);
3. ``pytest tests/gpu``.

``--dry-run`` takes the same path on the CPU with the tiny model, a few steps, fp32, and
``torch.compile``'s "eager" backend (dynamo only); CUDA graphs and TensorRT are skipped there
with the reason. Run it through ``scripts/gpu_check.sh``, which installs missing wheels first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUDGET_S = 450.0  # of the 8 minutes: leave room for start-up and the JSON
TENSORRT_MIN_LEFT_S = 300.0  # an SD 1.5 export + engine build needs about this much


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
    repeats: int
    compile_backend: str
    cuda_graphs: bool
    threads: int  # torch CPU threads; 0: torch's default

    @classmethod
    def full(cls) -> CheckPlan:
        return cls("sd15-shape", "cuda", 512, 4, 10, 3, "bf16", 50, 512, 3, "inductor", True, 0)

    @classmethod
    def dry_run(cls, tiny_model: str) -> CheckPlan:
        # One thread: CPU machines that run this are shared (and it is a path check, not a bench).
        return cls(tiny_model, "cpu", 32, 1, 1, 1, "fp32", 2, 32, 1, "eager", False, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.py", description=__doc__)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, few steps")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"), help="results folder")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop new phases after")
    parser.add_argument("--skip-tests", action="store_true", help="do not run pytest tests/gpu")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="textinv-gpu-check-") as scratch:
        plan = _plan(args.dry_run, Path(scratch))
        results = run_check(plan, args, started, Path(scratch))
    results["wall_s"] = time.perf_counter() - started
    path = args.out / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    for line in _summary(results):
        print(line)
    print(f"wrote {path} ({results['wall_s']:.0f} s)")
    failed = [name for name, phase in results["phases"].items() if phase["status"] == "failed"]
    return 1 if failed else 0


def _plan(dry_run: bool, scratch: Path) -> CheckPlan:
    if not dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device; run with --dry-run on a CPU machine")
        return CheckPlan.full()
    from textinv.testing import build_tiny_model

    return CheckPlan.dry_run(str(build_tiny_model(scratch / "tiny-sd")))


def run_check(
    plan: CheckPlan, args: argparse.Namespace, started: float, scratch: Path
) -> dict[str, Any]:
    from textinv.cli.bench.report_machine import machine_info, versions

    results: dict[str, Any] = {
        "dry_run": args.dry_run,
        "plan": asdict(plan),
        "machine": machine_info(plan.device),
        "versions": versions(),
        "phases": {},
    }
    phases: list[tuple[str, Callable[[], Any]]] = [
        ("invert", lambda: check_invert(plan)),
        ("generate_torch", lambda: check_generate(plan)),
        ("tensorrt", lambda: check_tensorrt(plan, scratch, _left(args, started))),
    ]
    if not args.skip_tests:
        phases.append(("pytest_gpu", lambda: check_tests(args.out)))
    for name, phase in phases:
        if _left(args, started) <= 0:
            results["phases"][name] = {"status": "skipped", "reason": "time budget spent"}
            continue
        print(f"gpu check: {name} ...", flush=True)
        results["phases"][name] = _run_phase(phase)
    return results


def _left(args: argparse.Namespace, started: float) -> float:
    return float(args.budget_s - (time.perf_counter() - started))


def _run_phase(phase: Callable[[], Any]) -> dict[str, Any]:
    """A phase's result, or its error: one failing phase never loses the others' numbers."""
    begun = time.perf_counter()
    try:
        outcome = phase()
    except Exception as error:  # recorded in the JSON; the run goes on
        return {
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
            "seconds": time.perf_counter() - begun,
        }
    if isinstance(outcome, dict) and outcome.get("status") == "skipped":
        return outcome
    return {"status": "ok", "seconds": time.perf_counter() - begun, "result": outcome}


# -- the phases ---------------------------------------------------------------------------------


def check_invert(plan: CheckPlan) -> dict[str, Any]:
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
    return measure_invert(settings)


def check_generate(plan: CheckPlan, engines: Path | None = None) -> dict[str, Any]:
    from textinv.cli.bench.generate import GenerateBenchSettings, TorchVariant, measure_generate
    from textinv_client.choices import Precision
    from textinv_server.backends import BackendName, TorchOptions

    variants = [
        TorchVariant("torch"),
        TorchVariant(
            "torch-compile", TorchOptions(compile=True, compile_backend=plan.compile_backend)
        ),
    ]
    if plan.cuda_graphs:
        variants.append(TorchVariant("torch-cudagraph", TorchOptions(cuda_graph=True)))
    settings = GenerateBenchSettings(
        model=plan.model,
        engines=engines,
        backends=(BackendName.TORCH, BackendName.TENSORRT) if engines else (BackendName.TORCH,),
        steps=plan.steps,
        resolution=plan.resolution,
        warmup=1,
        repeats=plan.repeats,
        threads=plan.threads,
        device=plan.device,
        weights=Precision.BF16 if Precision.parse(plan.precision) is Precision.BF16 else None,
        channels_last=True,
        torch_variants=tuple(variants),
        concepts=False,
    )
    report = measure_generate(settings)
    if not plan.cuda_graphs:
        report["notes"].append("torch-cudagraph: skipped (CUDA graphs need a CUDA device)")
    report["anchors"] = {
        "tensorrt_sd15_512_50_steps_a100_s": 0.82,
        "stable_fast_h100_it_per_s": 104.6,
    }
    return report


def check_tensorrt(plan: CheckPlan, scratch: Path, left_s: float) -> dict[str, Any]:
    """Engines for this GPU, then the tensorrt backend against torch and diffusers."""
    from textinv_export.tensorrt import tensorrt_missing

    missing = tensorrt_missing()
    if missing is not None:
        return {"status": "skipped", "reason": missing}
    if left_s < TENSORRT_MIN_LEFT_S:
        return {"status": "skipped", "reason": f"{left_s:.0f} s left; an engine build needs more"}
    from textinv.testing import load_benchmark_model
    from textinv_export.exporter import ExportConfig, export_model
    from textinv_export.manifest import Target
    from textinv_export.specs import Component, Precision, Range, ShapeRanges

    started = time.perf_counter()
    out = scratch / "engines"
    config = ExportConfig(
        out,
        target=Target.TENSORRT,
        precision=Precision.FP16,
        ranges=ShapeRanges(
            Range(1, 1, 1), Range(plan.resolution, plan.resolution, plan.resolution)
        ),
        components=(Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER),
    )
    export_model(load_benchmark_model(plan.model), config, progress=lambda _: None)
    build_s = time.perf_counter() - started
    report = check_generate(replace(plan, cuda_graphs=False), engines=out)
    return {"export_and_build_s": build_s, "generate": report}


def check_tests(out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "tests/gpu", "-p", "no:cacheprovider"]
    command += ["--junitxml", str(out / "pytest-gpu.xml")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    tail = (done.stdout + done.stderr).strip().splitlines()
    # pytest exits 5 when every test was skipped or deselected (no CUDA in a dry run)
    if done.returncode not in (0, 5):
        raise RuntimeError("pytest tests/gpu failed:\n" + "\n".join(tail[-30:]))
    return {"exit_code": done.returncode, "summary": tail[-1] if tail else ""}


def _summary(results: dict[str, Any]) -> list[str]:
    lines = [f"gpu check ({'dry run, CPU' if results['dry_run'] else 'CUDA'})"]
    for name, phase in results["phases"].items():
        detail = phase.get("reason") or phase.get("error") or f"{phase.get('seconds', 0):.0f} s"
        lines.append(f"  {name}: {phase['status']} ({detail})")
    invert = results["phases"].get("invert", {}).get("result")
    if invert:
        lines.append(
            f"  invert: textinv {invert['textinv']['steps_per_s']:.2f} steps/s, reference "
            f"{invert['reference']['steps_per_s']:.2f}, speedup {invert['speedup']:.2f}×"
        )
    generate = results["phases"].get("generate_torch", {}).get("result")
    if generate:
        for name, row in generate["runners"].items():
            step_ms = row["unet_step"]["median_ms"]
            lines.append(
                f"  {name}: e2e {row['e2e']['median_ms']:.0f} ms, UNet step {step_ms:.2f} ms "
                f"({1000 / step_ms:.1f} it/s), ×{row['speedup_e2e']:.2f} diffusers"
            )
    tests = results["phases"].get("pytest_gpu", {}).get("result")
    if tests:
        lines.append(f"  pytest tests/gpu: {tests['summary']}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
