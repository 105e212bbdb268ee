"""``textinv bench generate``'s rows as a table, and which rows were measured: shared by the
bench's own output, ``bench report`` (JSON, Markdown, plots) and ``scripts/gpu_check``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from textinv.cli.bench.generate_runners import EAGER, REFERENCE, UNET_CHECK


def measured_rows(runners: Mapping[str, Any]) -> dict[str, Any]:
    """The runners that were measured: a failed runner's row holds its error, not times."""
    return {name: row for name, row in runners.items() if row.get("status", "ok") == "ok"}


def print_report(report: dict[str, Any]) -> None:
    from textinv.cli.bench.generate_concepts import concept_lines

    for batch in report["batches"].values():
        print(f"{batch['num_images']} image(s) per request:")
        _print_rows(batch["runners"])
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


def cell(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _stats(values: dict[str, float]) -> str:
    return f"{values['median_ms']:.1f} ({values['min_ms']:.1f}-{values['max_ms']:.1f})"
