"""``textinv bench time-to-concept``'s plot: fidelity against training time, one panel per concept.

Solid lines are the learned word's reconstruction, dashed ones its edit + kept, one colour per
recipe, with ±1 standard error as bars; the horizontal lines are the targets that define
time-to-concept (0.8 of the best caption's reconstruction, 0.9 of its edit + kept).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from textinv.cli.bench.time_to_concept import ConceptResult

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def fidelity_over_time(results: list[ConceptResult], path: Path) -> Path:
    """Save the plot as a PNG at ``path`` and return it."""
    figure, panels = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for axes, result in zip(panels[0], results, strict=True):
        for colour, run in zip(COLOURS, result.runs, strict=False):
            seconds = [r.seconds for r in run.readings]
            for measure, style, label in (
                ("reconstruction", "o-", "reconstruction"),
                ("edit_kept", "^--", "edit + kept"),
            ):
                shares = [getattr(r.fidelity, measure) for r in run.readings]
                values, errors = [s.value for s in shares], [s.se for s in shares]
                axes.errorbar(seconds, values, yerr=errors, fmt=style, color=colour,
                              label=f"{run.recipe}: {label}")  # fmt: skip
        axes.axhline(result.target.reconstruction, color="gray", lw=0.8, label="targets")
        axes.axhline(result.target.edit_kept, color="gray", lw=0.8, ls="--")
        axes.set_xscale("log")
        axes.set_xlabel("training time, s (log)")
        axes.set_ylabel("share of images")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title(f"<{result.concept}>")
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
