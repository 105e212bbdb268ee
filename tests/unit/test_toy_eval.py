"""``textinv toy eval``: its edits, its table, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from textinv.cli import main
from textinv.toy import world
from textinv.toy.classifier import Reading
from textinv.toy.evaluate import EvalConfig, EvalReport, EvalRow, edits_for, format_table


def test_edits_change_one_thing_and_avoid_the_concepts_colours() -> None:
    concept = world.held_out_concept("toy-stripes")
    edits = edits_for(concept.thing)
    backgrounds = [e.background for e in edits if e.background]
    assert backgrounds and not set(backgrounds) & concept.thing.colours
    scene = world.concept_scenes(concept, count=1)[0]
    reading = Reading.of(scene)
    moved = Reading(**{**reading.__dict__, "size": "small", "position": "top left"})
    corner = next(e for e in edits if e.position)
    assert corner.applied(moved) and not corner.applied(reading)


def test_the_table_has_one_line_per_row_and_only_measured_columns() -> None:
    rows = (
        EvalRow("init word", "circle", reconstruction=0.125, edit_applied=0.5, edit_kept=0.0),
        EvalRow("learned concept", "<toy-stripes>", reconstruction=0.75, edit_applied=0.5),
    )
    table = format_table(EvalReport("<toy-stripes>", "m", rows)).splitlines()
    assert len(table) == 2 + len(rows)
    assert "0.12" in table[2] and "0.75" in table[3]
    assert "CLIP" not in table[0] and "DINO" not in table[0]


def test_bad_values_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="images_per_prompt must be at least 1, got 0"):
        EvalConfig(concept=tmp_path / "c.safetensors", images_per_prompt=0)
    assert main(["toy", "eval", "--concept", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
