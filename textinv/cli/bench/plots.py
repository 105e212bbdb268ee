"""The benchmark report's plots (matplotlib, headless): stages, concurrency, training.

Imported only by ``textinv.cli.bench.report_markdown``; a missing matplotlib makes the report
skip the plots.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt

from textinv.cli.bench.generate_table import measured_rows

STAGES = (("text_encoder", "text encoder"), ("unet_step", "UNet step"), ("vae_decode", "VAE"))


def draw_all(report: dict[str, Any], out: Path) -> list[Path]:
    paths = [stages(report["generate"], out / "stages.png")]
    if report["serve"]:
        paths.append(concurrency(report["serve"], out / "concurrency.png"))
    paths.append(training(report["invert"], out / "training.png"))
    return paths


def _errors(stats: list[dict[str, float]]) -> list[list[float]]:
    """matplotlib's asymmetric error bars: [[below...], [above...]] from min and max."""
    return [
        [s["median_ms"] - s["min_ms"] for s in stats],
        [s["max_ms"] - s["median_ms"] for s in stats],
    ]


def stages(generate: dict[str, Any], path: Path) -> Path:
    """Grouped bars: each stage's median (min-max whiskers) per runner; log scale."""
    measured = measured_rows(generate["runners"])
    runners = list(measured)
    width = 0.8 / len(STAGES)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.8 * len(runners)), 4))
    for index, (key, label) in enumerate(STAGES):
        stats = [measured[name][key] for name in runners]
        positions = [r + (index - 1) * width for r in range(len(runners))]
        medians = [s["median_ms"] for s in stats]
        axes.bar(positions, medians, width, yerr=_errors(stats), capsize=3, label=label)
    axes.set_xticks(range(len(runners)), runners)
    axes.set_yscale("log")
    axes.set_ylabel("ms (median, min–max)")
    s = generate["settings"]
    axes.set_title(f"Latency per stage: {s['resolution']}² px, {s['device']}, {s['weights']}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def concurrency(serve: list[dict[str, Any]], path: Path) -> Path:
    """Box plots of every request's latency per mode and number of clients."""
    rows = [r for r in serve if r["latencies_ms"]]
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4))
    axes.boxplot([r["latencies_ms"] for r in rows], whis=(1, 99))
    axes.set_xticks(range(1, len(rows) + 1), [f"{r['mode']}\n×{r['concurrency']}" for r in rows])
    axes.set_ylabel("request latency ms (box: quartiles, whiskers: p1–p99)")
    axes.set_title("Latency under concurrent clients")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def training(invert: dict[str, Any], path: Path) -> Path:
    """Steps/s of ours and the reference, whiskers from the fastest and slowest timed step."""
    methods = ("textinv", "reference")
    rates = [invert[m]["steps_per_s"] for m in methods]
    low = [1 / invert[m]["max_step_s"] for m in methods]
    high = [1 / invert[m]["min_step_s"] for m in methods]
    errors = [[r - lo for r, lo in zip(rates, low, strict=True)],
              [hi - r for r, hi in zip(rates, high, strict=True)]]  # fmt: skip
    figure, axes = plt.subplots(figsize=(5, 4))
    axes.bar(methods, rates, yerr=errors, capsize=4, color=["tab:green", "tab:gray"])
    axes.set_ylabel("training steps/s (median; whiskers: slowest–fastest step)")
    s = invert["settings"]
    axes.set_title(
        f"Training: {invert['speedup']:.2f}× the reference\n{s['resolution']} px, batch "
        f"{s['batch_size']}, {s['precision']}, {s['device']}"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
