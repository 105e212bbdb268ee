"""Time-to-concept on synthetic curves, the shares' standard errors, and the bench's table."""

from __future__ import annotations

import math

import pytest

from textinv.cli.bench.learning_curve import read_steps
from textinv.cli.bench.time_to_concept import ConceptResult, RecipeRun, markdown
from textinv.toy.evaluation.time_to_concept import (
    Fidelity,
    Reading,
    Share,
    Target,
    speedup,
    time_to_concept,
)

N = 128


def fidelity(reconstruction: float, kept: float, applied: float = 1.0) -> Fidelity:
    return Fidelity(Share(reconstruction, N), Share(applied, N), Share(kept, N))


# The best caption reconstructs in 0.70 and keeps edits in 0.40: the target is 0.56 and 0.36.
CAPTION = fidelity(0.70, 0.40)


def curve(points: list[tuple[int, float, float, float]]) -> list[Reading]:
    """(step, seconds, reconstruction, edit + kept) → readings."""
    return [Reading(step, seconds, fidelity(r, k)) for step, seconds, r, k in points]


def test_the_target_is_a_share_of_the_captions() -> None:
    target = Target.of(CAPTION)
    assert target.reconstruction == pytest.approx(0.56)
    assert target.edit_kept == pytest.approx(0.36)


def test_the_first_reading_that_meets_both_is_the_time() -> None:
    readings = curve(
        [
            (25, 1.0, 0.10, 0.05),
            (50, 2.0, 0.40, 0.30),
            (100, 4.0, 0.60, 0.20),  # reconstruction reached, but edits no longer keep it
            (200, 8.0, 0.62, 0.37),  # both: this is the time
            (400, 16.0, 0.70, 0.39),
        ]
    )
    reached = time_to_concept(list(reversed(readings)), Target.of(CAPTION))  # any order
    assert reached is not None and (reached.step, reached.seconds) == (200, 8.0)


def test_exactly_at_the_target_counts_and_never_reaching_it_is_none() -> None:
    target = Target.of(CAPTION)
    at = curve([(10, 0.5, target.reconstruction, target.edit_kept)])
    assert time_to_concept(at, target) == at[0]
    below = curve([(10, 0.5, 0.55, 0.5), (20, 1.0, 0.9, 0.35)])  # each misses one of the two
    assert time_to_concept(below, target) is None
    assert time_to_concept([], target) is None


def test_a_concept_no_words_draw_has_no_time_to_concept() -> None:
    floor = fidelity(0.01, 0.0)
    undrawable = Target.of(fidelity(0.0, 0.0), floor)
    assert not undrawable.measurable
    assert time_to_concept(curve([(25, 1.0, 0.0, 0.0)]), undrawable) is None
    # Within noise of the init word is not enough either; clearly above it is.
    assert not Target.of(fidelity(0.03, 0.0), floor).measurable
    assert Target.of(CAPTION, floor).measurable


def test_speedup_reads_both_times_or_bounds_a_run_that_never_got_there() -> None:
    ours = Reading(100, 5.0, CAPTION)
    theirs = Reading(3000, 60.0, CAPTION)
    assert speedup(ours, theirs, 200.0) == "12.0×"
    assert speedup(ours, None, 200.0) == "> 40.0× (theirs never reached it)"
    assert speedup(None, theirs, 200.0) == "not reached by ours"


def test_a_shares_standard_error_is_binomial() -> None:
    share = Share.of([True] * 32 + [False] * 96)
    assert share.value == 0.25 and share.n == 128
    assert share.se == pytest.approx(math.sqrt(0.25 * 0.75 / 128))
    assert Share(0.5, 101).se < 0.05 <= Share(0.5, 100).se  # what 128 images buy
    assert str(share) == "0.25 ± 0.04"
    assert math.isinf(Share.of([]).se)


def test_reads_double_from_25_and_end_at_the_last_step() -> None:
    assert read_steps(600) == {25, 50, 100, 200, 400, 600}
    assert read_steps(3000) == {25, 50, 100, 200, 400, 800, 1600, 3000}
    assert read_steps(20) == {20}


def test_the_table_has_each_recipe_and_the_ratio_to_diffusers() -> None:
    ours = curve([(25, 1.0, 0.2, 0.1), (100, 4.0, 0.6, 0.38)])
    theirs = curve([(100, 8.0, 0.3, 0.2), (800, 64.0, 0.58, 0.37)])
    target = Target.of(CAPTION)
    runs = (
        RecipeRun("default", 100, 4.0, tuple(ours), time_to_concept(ours, target)),
        RecipeRun("diffusers", 800, 64.0, tuple(theirs), time_to_concept(theirs, target)),
    )
    table = markdown([ConceptResult("toy-x", CAPTION, fidelity(0.0, 0.0), target, runs)])
    assert "| toy-x | default | 100 | 4.0 | 0.60 ± 0.04 |" in table
    assert "| toy-x | diffusers | 800 | 64.0 | 0.58 ± 0.04 |" in table
    assert "4.0 s (100 steps)" in table and "64.0 s (800 steps)" in table
    assert "| toy-x | ratio | | | | | | default: 16.0× |" in table
