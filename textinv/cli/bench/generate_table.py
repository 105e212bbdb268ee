"""``textinv bench generate``'s rows as a table, and which rows were measured: shared by the
bench's own output, ``bench report`` (JSON, Markdown, plots) and ``scripts/gpu_check``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textinv.cli.bench.generate_checks import UNET_CHECK
from textinv.cli.bench.generate_runners import DIFFUSERS_SAME, EAGER, OPTIMUM, PEERS, REFERENCE


def measured_rows(runners: Mapping[str, Any]) -> dict[str, Any]:
    """The runners that were measured: a failed runner's row holds its error, not times."""
    return {name: row for name, row in runners.items() if row.get("status", "ok") == "ok"}


def print_report(report: dict[str, Any]) -> None:
    from textinv.cli.bench.generate_concepts import concept_lines

    for batch in report["batches"].values():
        print(f"{batch['num_images']} image(s) per request:")
        _print_rows(batch["runners"])
        _print_same_precision(batch["runners"])
        _print_optimum_ratios(batch["runners"])
    if report.get("concepts") is not None:
        print("\n".join(concept_lines(report["concepts"])))


def _print_rows(rows: dict[str, Any]) -> None:
    """One line per runner: stages, ratios, first run, memory, pixel differences, the UNet
    check; a failed runner's error."""
    print(
        f"{'runner':<24} {'e2e ms median (min-max)':>26} {'text':>6} {'unet/step':>9} "
        f"{'vae':>7} {'e2e ×':>6} {'step ×':>6} {'1st ms':>8} {'MiB':>7} {'Δpx t/d':>7} "
        f"{'UNet rel':>8}"
    )
    for name, row in rows.items():
        if row["status"] != "ok":
            print(f"{name:<24} failed in round {row['failed_in_round']}: {row['error']}")
            continue
        diffs = "/".join(cell(row[f"max_pixel_diff_vs_{other}"]) for other in (EAGER, REFERENCE))
        print(
            f"{name:<24} {_stats(row['e2e']):>26} {row['text_encoder']['median_ms']:>6.1f} "
            f"{row['unet_step']['median_ms']:>9.2f} {row['vae_decode']['median_ms']:>7.1f} "
            f"{cell(row['speedup_e2e'], '.2f'):>6} {cell(row['speedup_unet_step'], '.2f'):>6} "
            f"{row['first_run_ms']:>8.0f} {cell(row['peak_cuda_mib']):>7} {diffs:>7} "
            f"{cell(row[UNET_CHECK], '.1e'):>8}"
        )


def _print_same_precision(rows: dict[str, Any]) -> None:
    """Where ours ran in another precision than diffusers' fp32 row: both ratios, so the dtype's
    share and our code's share read apart."""
    for name, row in rows.items():
        same = row.get("speedup_e2e_same_precision")
        if same is not None:
            print(
                f"  {name}: e2e {cell(row['speedup_e2e'], '.2f')}× diffusers as loaded, "
                f"{same:.2f}× diffusers in the same precision ({DIFFUSERS_SAME}); UNet step "
                f"{cell(row['speedup_unet_step'], '.2f')}× / "
                f"{cell(row['speedup_unet_step_same_precision'], '.2f')}×"
            )


def _print_optimum_ratios(rows: dict[str, Any]) -> None:
    """Each of our runners against optimum's ORT pipeline, where it ran: end to end and per step
    (the step as both take it: step-end to step-end, UNet and scheduler)."""
    optimum = rows.get(OPTIMUM)
    if optimum is None or optimum["status"] != "ok":
        return
    for name, row in rows.items():
        if name in PEERS or row["status"] != "ok":
            continue
        e2e = optimum["e2e"]["median_ms"] / row["e2e"]["median_ms"]
        step = optimum["unet_step"]["median_ms"] / row["unet_step"]["median_ms"]
        print(f"  {name}: {e2e:.2f}× {OPTIMUM} end to end, {step:.2f}× per step")


def cell(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _stats(values: dict[str, float]) -> str:
    return f"{values['median_ms']:.1f} ({values['min_ms']:.1f}-{values['max_ms']:.1f})"
