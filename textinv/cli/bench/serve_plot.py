"""``textinv bench serve --plot``: p50 and p99 latency against throughput (matplotlib, headless).

One line per mode (closed loop with batching, without, and the open-loop rates), each point
labelled with its clients (``×4``) or its arrival rate (``λ 2.5/s``). Where a line bends up, the
server has reached its capacity: more offered load buys queueing, not throughput.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt

from textinv.cli.bench.serve_load import LoadResult

# The in-process baseline is not load on the server, so it has no place on this curve.
PLOTTED = (("grpc", "closed loop", "tab:blue"), ("unbatched", "closed loop, batching off",
           "tab:gray"), ("open-loop", "open loop (Poisson)", "tab:orange"))  # fmt: skip


def latency_vs_throughput(results: list[LoadResult], path: Path, title: str) -> Path:
    """Save the plot as a PNG at ``path`` and return it."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for mode, label, color in PLOTTED:
        points = sorted(
            (r for r in results if r.mode == mode and r.requests > r.failures),
            key=lambda r: (r.offered_rps or 0.0, r.concurrency),
        )
        if not points:
            continue
        rps = [r.throughput_rps for r in points]
        axes.plot(rps, [r.p50_ms for r in points], "o-", color=color, label=f"{label}: p50")
        axes.plot(rps, [r.p99_ms for r in points], "^--", color=color, label=f"{label}: p99")
        for r in points:
            axes.annotate(_point_label(r), (r.throughput_rps, r.p99_ms), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))  # fmt: skip
    axes.set_xlabel("throughput (successful requests/s)")
    axes.set_ylabel("request latency ms")
    axes.set_ylim(bottom=0)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _point_label(result: LoadResult) -> str:
    if result.offered_rps is None:
        return f"×{result.concurrency}"
    return f"λ {result.offered_rps:.3g}/s"
