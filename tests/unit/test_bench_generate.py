"""``textinv bench generate`` per batch: warm-up cost, memory (None off CUDA), the pixel
differences between runners and the one-call UNet check, on the tiny model in fp32 on the CPU
(where they are exact); a runner that fails keeps the others' rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from torch._dynamo import register_backend
from torch._dynamo.utils import counters

from textinv.cli import main
from textinv.cli.bench.generate import (
    ROW_NOTES,
    VARIANTS,
    GenerateBenchSettings,
    measure_generate,
    open_generate_bench,
)
from textinv.cli.bench.generate_checks import UNET_CHECK, unet_call_checks
from textinv.cli.bench.generate_runners import (
    Samples,
    image_difference,
    our_runner,
    round_robin,
    runner_rows,
)
from textinv_server.backends import BackendName


# Two torch.compile backends, real ones (dynamo traces the UNet and hands them its graph): one
# fails as inductor does without a C compiler, one returns the graph's outputs scaled by 1.01.
@register_backend
def textinv_test_broken(graph, example_inputs):
    raise RuntimeError("no C compiler found")


@register_backend
def textinv_test_scaled(graph, example_inputs):
    def run(*args):
        outs = graph(*args)
        return type(outs)(o * 1.01 if o.is_floating_point() else o for o in outs)

    return run


def tiny_settings(tiny_model_dir, compile_backend: str, **overrides) -> GenerateBenchSettings:
    values = dict(
        model=str(tiny_model_dir), backends=(BackendName.TORCH,), steps=1, resolution=32,
        warmup=0, repeats=2, threads=1, num_images=(1,), compile_backend=compile_backend,
        torch_variants=(VARIANTS["eager"], VARIANTS["compile"]), concepts=False,
    )  # fmt: skip
    return GenerateBenchSettings(**{**values, **overrides})


@pytest.fixture(scope="module")
def report(tiny_model_dir) -> dict:
    settings = GenerateBenchSettings(
        model=str(tiny_model_dir), backends=(BackendName.TORCH,), steps=2, resolution=32, warmup=1,
        repeats=1, threads=1, num_images=(1, 2), compile_backend="eager",
        torch_variants=(VARIANTS["eager"], VARIANTS["compile"], VARIANTS["compile+cuda-graph"]),
        concepts=False,
    )  # fmt: skip
    return measure_generate(settings)


def test_each_batch_is_its_own_round_robin_and_runners_is_the_first(report) -> None:
    assert set(report["batches"]) == {"1", "2"}
    assert [b["num_images"] for b in report["batches"].values()] == [1, 2]
    assert report["runners"] == report["batches"]["1"]["runners"]
    assert report["settings"]["num_images"] == [1, 2]
    assert report["settings"]["compile_backend"] == "eager"
    for batch in report["batches"].values():
        assert set(batch["runners"]) == {"diffusers", "torch", "torch-compile"}
    # compile+cuda-graph needs CUDA: skipped with the reason, not failed.
    assert any(n.startswith("torch-compile-cudagraph: skipped") for n in report["notes"])


def test_rows_hold_first_run_memory_and_pixel_differences(report) -> None:
    for batch in report["batches"].values():
        for row in batch["runners"].values():
            assert row["first_run_ms"] > 0
            assert row["warmup_cost_ms"] == pytest.approx(
                row["first_run_ms"] - row["e2e"]["median_ms"]
            )
            assert row["status"] == "ok"
            assert row["peak_cuda_mib"] is None and row["peak_cuda_above_start_mib"] is None
            assert row["device_used_mib"] is None
            # fp32 on the CPU: ours, compiled or not, draws and computes what diffusers does.
            assert row["max_pixel_diff_vs_diffusers"] <= 1
            assert row["max_pixel_diff_vs_torch"] <= 1
        runners = batch["runners"]
        assert runners["diffusers"][UNET_CHECK] is None  # not one of our torch runners
        for name in ("torch", "torch-compile"):  # dynamo's "eager" backend: the eager kernels
            assert runners[name][UNET_CHECK] == pytest.approx(0.0, abs=1e-6)
    assert set(ROW_NOTES) <= set(report["notes"])  # how to read them (no CUDA notes here)
    assert not any(note.startswith("cudnn.benchmark") for note in report["notes"])
    json.dumps(report)  # plain data: the CLI and the GPU check write it as JSON


def test_the_cli_takes_batches_compile_backend_and_the_new_variant(
    tiny_model_dir, tmp_path, capsys
) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "generate", "--model", str(tiny_model_dir), "--backends", "torch"]
    argv += ["--steps", "1", "--resolution", "32", "--warmup", "0", "--repeats", "1"]
    argv += ["--num-images", "1", "2", "--compile-backend", "eager"]
    argv += ["--torch-variants", "eager,compile+cuda-graph", "--threads", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert set(saved["batches"]) == {"1", "2"}
    printed = capsys.readouterr().out
    assert "2 image(s) per request:" in printed and "torch-compile-cudagraph: skipped" in printed


def test_round_robin_keeps_warmup_runs_apart_and_the_last_images() -> None:
    calls: list[int] = []

    def run(samples: Samples) -> None:
        calls.append(len(calls))
        samples.add(float(len(calls)), 0.0, 0.0, 0.0)
        samples.images = np.full((1, 2, 2, 3), len(calls), np.uint8)

    samples = round_robin({"a": run}, warmup=2, repeats=3)["a"]
    assert samples.warmup_e2e == [1.0, 2.0] and samples.e2e == [3.0, 4.0, 5.0]
    assert samples.images is not None and int(samples.images.max()) == 5
    assert samples.peak_cuda_mib is None  # no CUDA device given


def test_image_difference_is_the_largest_and_mean_level_difference() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1, 0, 0, 0] = 200
    assert image_difference(a, b) == (200, pytest.approx(200 / a.size))
    assert image_difference(b, a)[0] == 200  # no uint8 wrap-around
    with pytest.raises(ValueError, match="shape"):
        image_difference(a, a[:1])


def test_a_failing_runner_keeps_its_error_and_leaves_the_later_rounds() -> None:
    calls = {"good": 0, "bad": 0}

    def good(samples: Samples) -> None:
        calls["good"] += 1
        samples.add(10.0, 1.0, 2.0, 3.0)
        samples.images = np.zeros((1, 2, 2, 3), np.uint8)

    def bad(samples: Samples) -> None:
        calls["bad"] += 1
        if calls["bad"] == 2:  # the first measured round (after one warm-up)
            raise RuntimeError("CUDA graph capture failed")
        samples.add(20.0, 1.0, 2.0, 3.0)

    samples = round_robin({"diffusers": good, "bad": bad}, warmup=1, repeats=3)
    assert calls == {"good": 4, "bad": 2}  # out after its failure, the other to the end
    assert samples["diffusers"].error is None and samples["diffusers"].e2e == [10.0] * 3
    rows = runner_rows(samples)
    failed = rows["bad"]
    assert failed["status"] == "failed" and failed["failed_in_round"] == 1
    assert failed["error"] == "RuntimeError: CUDA graph capture failed"
    assert "in bad" in failed["traceback"] and "e2e" not in failed
    assert rows["diffusers"]["status"] == "ok" and rows["diffusers"]["speedup_e2e"] == 1.0


def test_without_diffusers_the_ratios_are_none_and_the_other_rows_stay() -> None:
    def reference(_samples: Samples) -> None:
        raise ImportError("diffusers")

    def ours(samples: Samples) -> None:
        samples.add(10.0, 1.0, 2.0, 3.0)
        samples.images = np.zeros((1, 2, 2, 3), np.uint8)

    rows = runner_rows(round_robin({"diffusers": reference, "torch": ours}, 0, 2))
    assert rows["diffusers"]["failed_in_round"] == 0
    torch_row = rows["torch"]
    assert torch_row["status"] == "ok" and torch_row["e2e"]["median_ms"] == 10.0
    assert torch_row["speedup_e2e"] is None and torch_row["speedup_unet_step"] is None
    assert torch_row["max_pixel_diff_vs_diffusers"] is None  # nothing to compare against
    assert torch_row["max_pixel_diff_vs_torch"] == 0
    json.dumps(rows)


@pytest.mark.slow
def test_a_compile_backend_that_raises_fails_its_runner_only(tiny_model_dir, capsys) -> None:
    report = measure_generate(tiny_settings(tiny_model_dir, "textinv_test_broken"))
    rows = report["runners"]
    failed = rows["torch-compile"]
    assert failed["status"] == "failed" and failed["failed_in_round"] == 0
    assert "no C compiler found" in failed["error"]
    for name in ("diffusers", "torch"):
        assert rows[name]["status"] == "ok" and rows[name]["speedup_e2e"] > 0
    assert rows["torch"]["max_pixel_diff_vs_diffusers"] <= 1
    from textinv.cli.bench.generate_table import print_report

    print_report(report)
    assert "torch-compile            failed in round 0: " in capsys.readouterr().out


@pytest.mark.slow
def test_the_unet_check_runs_the_runs_own_graph_and_sees_what_it_computes(
    tiny_model_dir,
) -> None:
    settings = tiny_settings(tiny_model_dir, "textinv_test_scaled", channels_last=True)
    with open_generate_bench(settings) as bench:
        request = bench.request(2)
        runners = {name: our_runner(p, request) for name, p in bench.pipelines.items()}
        round_robin(runners, 0, 1)  # compiles the UNet for this request's shapes
        graphs = counters["stats"]["unique_graphs"]
        checks = unet_call_checks(bench.model, bench.pipelines, request)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile: the runs' graph
    assert checks["torch"][UNET_CHECK] == 0.0  # the eager module against itself
    # The compiled UNet's outputs, scaled by 1.01: max |1.01 x - x| / max |x| = 0.01.
    assert checks["torch-compile"][UNET_CHECK] == pytest.approx(0.01, rel=1e-3)


def test_on_sdxl_diffusers_is_stable_diffusion_xl_and_concepts_carry_both_sets(
    tiny_sdxl_model_dir,
) -> None:
    """``bench generate --model sdxl-shape``'s path on the tiny SDXL model: diffusers' runner is
    ``StableDiffusionXLPipeline`` over the same modules (same pixels in fp32), onnxruntime gets
    both text encoders' graphs, and the concept costs use SDXL concepts (clip_l and clip_g)."""
    settings = GenerateBenchSettings(
        model=str(tiny_sdxl_model_dir), steps=2, resolution=32, warmup=0, repeats=1, threads=1,
        weights=None,
    )  # fmt: skip
    report = measure_generate(settings)
    runners = report["runners"]
    assert set(runners) >= {"diffusers", "torch", "onnxruntime"}
    assert all(row["status"] == "ok" for row in runners.values())
    assert runners["torch"]["max_pixel_diff_vs_diffusers"] <= 1
    assert runners["onnxruntime"]["max_pixel_diff_vs_diffusers"] <= 2
    assert report["concepts"]["backend"] == "onnxruntime"
    assert report["concepts"]["first_request_images"] == 1
