"""Held-out concepts: things no single word of the vocabulary names, learned by inversion.

Each is a shape in a two-colour stripe fill whose pair of colours the model never saw striped
together (it saw each colour in other pairs). ``sample_scene`` never draws them; the demo,
``textinv toy eval`` and ``textinv bench time-to-concept`` learn them from ``concept_images``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image

from textinv.toy.world.rendering import render
from textinv.toy.world.scenes import Scene, Thing
from textinv.toy.world.words import TEXTURES

BUNDLED_RESOLUTION = 64  # the inversion trainer wants images of at least 64 px a side


@dataclass(frozen=True)
class HeldOutConcept:
    """A concept the model never saw, learned by inversion from ``concept_images``."""

    name: str
    init_word: str  # the word the inversion starts from (and the baseline row of the eval)
    thing: Thing
    best_caption: str  # the closest that the vocabulary's words come to it
    backgrounds: tuple[str, ...] = field(default=("blue", "green", "gray", "pink", "black"))

    @property
    def token(self) -> str:
        return f"<{self.name}>"


def _striped(name: str, shape: str, colours: tuple[str, str], backgrounds: str) -> HeldOutConcept:
    """A shape in a stripe pair the training data never has; its init word is the shape's."""
    first, second = colours
    return HeldOutConcept(
        name=name,
        init_word=shape,
        thing=Thing(shape, first, stripe_colour=second),
        best_caption=f"{first} and {second} striped {shape}",
        backgrounds=tuple(backgrounds.split()),
    )


# Four pairs, no colour in two of them, each on its own shape; a concept's images show it on
# backgrounds that are none of its colours.
HELD_OUT: dict[str, HeldOutConcept] = {
    concept.name: concept
    for concept in (
        _striped("toy-stripes", "circle", ("yellow", "purple"), "blue green gray pink black red"),
        _striped("toy-candy", "square", ("red", "white"), "blue green gray black yellow purple"),
        _striped("toy-tiger", "triangle", ("orange", "black"), "blue green gray pink purple white"),
        _striped("toy-melon", "heart", ("green", "pink"), "blue gray black yellow white orange"),
    )
}
HELD_OUT_PAIRS = frozenset(c.thing.colours for c in HELD_OUT.values() if c.thing.stripe_colour)


def held_out_concept(name: str) -> HeldOutConcept:
    """The held-out concept called ``name`` (with or without its ``<>``)."""
    name = name.strip("<>")
    if name not in HELD_OUT:
        raise LookupError(f"unknown held-out concept {name!r}; known: {', '.join(HELD_OUT)}")
    return HELD_OUT[name]


def concept_scenes(concept: HeldOutConcept, count: int = 4, seed: int = 0) -> list[Scene]:
    """``count`` views of the concept: the same object over varied backgrounds and poses."""
    rng = random.Random(seed)
    scenes = []
    for i in range(count):
        thing = Thing(
            shape=concept.thing.shape,
            colour=concept.thing.colour,
            stripe_colour=concept.thing.stripe_colour,
            size="large",
            position="center",
            rotation=rng.uniform(-20.0, 20.0),
            scale=rng.uniform(0.95, 1.05),
            offset=(rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)),
        )
        background = concept.backgrounds[i % len(concept.backgrounds)]
        texture = "plain" if i % 2 == 0 else rng.choice(TEXTURES[1:])
        scenes.append(
            Scene(
                thing,
                background,
                texture,
                texture_seed=rng.randrange(2**31),
                caption=f"a {concept.best_caption} on a {background} background",
            )
        )
    return scenes


def concept_images(
    concept: HeldOutConcept, count: int = 4, seed: int = 0, resolution: int = BUNDLED_RESOLUTION
) -> list[Image.Image]:
    """The concept's training images, drawn at ``resolution`` (the model works at 32 px)."""
    return [render(scene, resolution) for scene in concept_scenes(concept, count, seed)]
