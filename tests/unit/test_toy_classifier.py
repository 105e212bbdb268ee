"""The shipped fidelity classifier reads the renderer's images back into their attributes."""

from __future__ import annotations

from pathlib import Path

import pytest

from textinv.toy import world
from textinv.toy.classifier import Reading, accuracy, load_classifier

# Fresh renders from a seed its training never drew; held-out shapes and fills included.
FLOORS = {
    "shape": 0.9,
    "pattern": 0.95,
    "colours": 0.85,
    "background": 0.95,
    "texture": 0.95,
    "size": 0.95,
    "position": 0.95,
}


def test_the_shipped_classifier_reads_fresh_renders() -> None:
    scores = accuracy(load_classifier(), count=300, seed=2027)
    low = {name: score for name, score in scores.items() if score < FLOORS[name]}
    assert not low, f"below the floor: {low}"


def test_a_reading_shows_identity_not_pose() -> None:
    concept = world.held_out_concept("toy-stripes")
    scene = world.concept_scenes(concept, count=1)[0]
    reading = Reading.of(scene)
    assert reading.shows(concept.thing)
    moved = Reading(**{**reading.__dict__, "size": "small", "position": "top left"})
    assert moved.shows(concept.thing)
    recoloured = Reading(**{**reading.__dict__, "colours": frozenset({"yellow", "blue"})})
    assert not recoloured.shows(concept.thing)
    solid = Reading(**{**reading.__dict__, "pattern": "solid"})
    assert not solid.shows(concept.thing)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_classifier(tmp_path / "absent.safetensors")
