"""The shapes world: deterministic pixels, captions that match the scene, held-out concepts."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from PIL import Image

from textinv.toy import DEMO_CONCEPT, concept_image_paths, world


def _digest(images: list[Image.Image]) -> str:
    return hashlib.sha256(b"".join(np.asarray(i).tobytes() for i in images)).hexdigest()


def test_renderer_is_deterministic_per_seed() -> None:
    first = [world.render(s) for s in world.sample_scenes(seed=3, count=40)]
    again = [world.render(s) for s in world.sample_scenes(seed=3, count=40)]
    other = [world.render(s) for s in world.sample_scenes(seed=4, count=40)]
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)
    assert all(i.size == (world.RESOLUTION, world.RESOLUTION) and i.mode == "RGB" for i in first)


def test_training_scenes_never_show_a_held_out_concept() -> None:
    scenes = world.sample_scenes(seed=0, count=3000)
    things = [s.thing for s in scenes] + [s.extra for s in scenes if s.extra]
    assert not any(t.colours in world.HELD_OUT_PAIRS for t in things if t.stripe_colour)
    # ... while the world is varied: every shape, colour, texture and position appears.
    assert {t.shape for t in things} == set(world.SHAPES)
    assert {t.colour for t in things} == set(world.COLOUR_NAMES)
    assert {s.texture for s in scenes} == set(world.TEXTURES)
    assert {t.position for t in things} == set(world.POSITIONS)
    assert 0.05 < np.mean([s.extra is not None for s in scenes]) < 0.3


def test_captions_name_what_is_drawn() -> None:
    for scene in world.sample_scenes(seed=1, count=300):
        caption = scene.caption
        assert scene.thing.shape in caption and scene.thing.colour in caption
        if scene.texture != "plain":
            assert f"on a {scene.background} {scene.texture} background" in caption
        if scene.thing.position != "center":
            assert f"in the {scene.thing.position} corner" in caption
        assert set(caption.split()) <= set(world.vocabulary())


def test_the_renderer_paints_the_named_colours() -> None:
    thing = world.Thing("square", "red", size="large")
    pixels = np.asarray(world.render(world.Scene(thing, background="blue")), dtype=int)
    centre, corner = pixels[16, 16], pixels[1, 1]
    assert np.abs(centre - world.COLOURS["red"]).max() <= 2
    assert np.abs(corner - world.COLOURS["blue"]).max() <= 2


def test_held_out_concept_images_are_bundled_as_rendered() -> None:
    concept = world.held_out_concept(DEMO_CONCEPT)
    paths = concept_image_paths(DEMO_CONCEPT)
    assert len(paths) == 4
    rendered = world.concept_images(concept, count=4)
    assert _digest([Image.open(p).convert("RGB") for p in paths]) == _digest(rendered)
    # No training caption can say it with one word: its two colours are never striped together.
    assert concept.token not in world.vocabulary() and concept.init_word in world.vocabulary()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": "blob", "colour": "red"}, "unknown shape 'blob'"),
        ({"shape": "star", "colour": "teal"}, "unknown colour 'teal'"),
        ({"shape": "star", "colour": "red", "stripe_colour": "red"}, "two colours"),
        ({"shape": "star", "colour": "red", "size": "huge"}, "unknown size 'huge'"),
    ],
)
def test_bad_values_are_refused_by_name(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        world.Thing(**kwargs)


def test_unknown_held_out_concept_names_the_known_ones() -> None:
    with pytest.raises(LookupError, match="toy-stripes"):
        world.held_out_concept("<toy-nothing>")
    assert world.sample_scene(random.Random(0)) == world.sample_scene(random.Random(0))
