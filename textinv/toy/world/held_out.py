"""Held-out concepts: things no single word of the vocabulary names, learned by inversion.

A particular two-colour stripe fill, and a shape that has no word. ``sample_scene`` never draws
them; the demo and ``textinv toy eval`` learn them from ``concept_images``.
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


HELD_OUT: dict[str, HeldOutConcept] = {
    concept.name: concept
    for concept in (
        HeldOutConcept(
            name="toy-stripes",
            init_word="circle",
            thing=Thing("circle", "yellow", stripe_colour="purple"),
            best_caption="yellow and purple striped circle",
            backgrounds=("blue", "green", "gray", "pink", "black", "red"),
        ),
        HeldOutConcept(
            name="toy-moon",
            init_word="circle",
            thing=Thing("moon", "orange"),
            best_caption="orange circle",
            backgrounds=("blue", "green", "gray", "purple", "black", "white"),
        ),
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
