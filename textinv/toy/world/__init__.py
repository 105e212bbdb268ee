"""The shapes world: a seeded procedural renderer of captioned images for the embedded model.

A scene is one object (a shape, a solid colour or a two-colour stripe fill, a size, a position
and a rotation) on a background (a plain colour or a texture), sometimes with a second object.
``sample_scene(rng)`` draws every random choice into a frozen ``Scene``; ``render(scene)`` is a
pure function of it, so the same seed gives the same pixels on every machine.

Held-out concepts (``HELD_OUT``) are things no single word of the vocabulary names: a shape in a
two-colour stripe fill whose two colours the training data never striped together. ``sample_scene``
never draws them; the demo and ``textinv toy eval`` learn them by inversion from
``concept_images``.

The parts: ``words`` (the closed sets of words, ``vocabulary()``), ``scenes`` (``Thing``,
``Scene``), ``sampling`` (the training distribution and its captions), ``rendering`` (pixels) and
``held_out`` (the held-out concepts and their images). Import them from here.
"""

from __future__ import annotations

from textinv.toy.world.held_out import (
    BUNDLED_RESOLUTION,
    HELD_OUT,
    HELD_OUT_PAIRS,
    HeldOutConcept,
    concept_images,
    concept_scenes,
    held_out_concept,
)
from textinv.toy.world.rendering import STRIPE_PERIOD, SUPERSAMPLE, render
from textinv.toy.world.sampling import (
    JITTER,
    caption_for,
    sample_scene,
    sample_scenes,
    sample_thing,
)
from textinv.toy.world.scenes import Scene, Thing
from textinv.toy.world.words import (
    COLOUR_NAMES,
    COLOURS,
    POSITIONS,
    RESOLUTION,
    SHAPES,
    SIZES,
    TEXTURES,
    vocabulary,
)

__all__ = [
    "BUNDLED_RESOLUTION",
    "COLOURS",
    "COLOUR_NAMES",
    "HELD_OUT",
    "HELD_OUT_PAIRS",
    "JITTER",
    "POSITIONS",
    "RESOLUTION",
    "SHAPES",
    "SIZES",
    "STRIPE_PERIOD",
    "SUPERSAMPLE",
    "TEXTURES",
    "HeldOutConcept",
    "Scene",
    "Thing",
    "caption_for",
    "concept_images",
    "concept_scenes",
    "held_out_concept",
    "render",
    "sample_scene",
    "sample_scenes",
    "sample_thing",
    "vocabulary",
]
