"""Time-to-concept: how long a recipe takes until its learned word works as well as words do.

A run's fidelity is read at intervals (``Reading``: the step, the training wall time so far, and
the shares of reconstruction and edit + kept, each with its standard error). The concept counts as
learned at the first reading whose reconstruction reaches ``RECONSTRUCTION_SHARE`` (0.8) of the
best caption's, while its edit + kept stays within ``KEPT_TOLERANCE`` (10%) of the caption's,
that is at least 0.9 of it. The time is the reading's, so it is resolved to the reading interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

RECONSTRUCTION_SHARE = 0.8
KEPT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Share:
    """A share of ``n`` binary outcomes, with its binomial standard error."""

    value: float
    n: int

    @property
    def se(self) -> float:
        """sqrt(p (1 - p) / n): 0.5 / sqrt(n) at worst (n ≥ 101 keeps it under 0.05)."""
        return math.sqrt(self.value * (1 - self.value) / self.n) if self.n else math.inf

    @classmethod
    def of(cls, outcomes: Sequence[bool]) -> Share:
        n = len(outcomes)
        return cls(sum(map(bool, outcomes)) / n if n else 0.0, n)

    def __str__(self) -> str:
        return f"{self.value:.2f} ± {self.se:.2f}"


@dataclass(frozen=True)
class Fidelity:
    """The paper's two measures, exact on the shapes world."""

    reconstruction: Share  # "a photo of a {}" images that show the concept
    edit_applied: Share  # edit images where the change happened
    edit_kept: Share  # ... and the concept was kept


@dataclass(frozen=True)
class Reading:
    """A run's fidelity after ``step`` optimizer steps and ``seconds`` of training."""

    step: int
    seconds: float  # training wall time, the readings' own time left out
    fidelity: Fidelity


@dataclass(frozen=True)
class Target:
    """What counts as learned, from the best caption's fidelity; ``measurable`` only where the
    caption reconstructs the concept clearly more often than the init word does (by more than
    two standard errors of the difference): a concept the model cannot draw from any words has
    no time-to-concept, since its target would be met by the init word itself."""

    reconstruction: float  # RECONSTRUCTION_SHARE × the caption's reconstruction
    edit_kept: float  # (1 - KEPT_TOLERANCE) × the caption's edit + kept
    measurable: bool = True

    @classmethod
    def of(cls, caption: Fidelity, floor: Fidelity | None = None) -> Target:
        measurable = True
        if floor is not None:
            ours, theirs = caption.reconstruction, floor.reconstruction
            noise = math.hypot(ours.se, theirs.se)
            measurable = ours.value - theirs.value > 2 * noise and ours.value > 0
        return cls(
            RECONSTRUCTION_SHARE * caption.reconstruction.value,
            (1 - KEPT_TOLERANCE) * caption.edit_kept.value,
            measurable,
        )

    def met_by(self, fidelity: Fidelity) -> bool:
        return (
            self.measurable
            and fidelity.reconstruction.value >= self.reconstruction
            and fidelity.edit_kept.value >= self.edit_kept
        )


def time_to_concept(readings: Sequence[Reading], target: Target) -> Reading | None:
    """The first reading (in step order) that meets ``target``; ``None`` if none does, or if
    the target is not measurable."""
    for reading in sorted(readings, key=lambda r: r.step):
        if target.met_by(reading.fidelity):
            return reading
    return None


def speedup(ours: Reading | None, theirs: Reading | None, theirs_total_s: float) -> str:
    """Their time-to-concept over ours, as the report prints it; when theirs never got there,
    a lower bound from their whole run ("> N×")."""
    if ours is None:
        return "not reached by ours"
    if theirs is not None:
        return f"{theirs.seconds / max(ours.seconds, 1e-9):.1f}×"
    return f"> {theirs_total_s / max(ours.seconds, 1e-9):.1f}× (theirs never reached it)"
