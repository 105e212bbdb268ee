"""Sampling scenes and their captions: the model's training distribution (never a held-out concept).

Every random choice is drawn from the ``random.Random`` passed in, in a fixed order, into a frozen
``Scene``; so a seed is a data set, the same on every machine.
"""

from __future__ import annotations

import random

from textinv.templates import OBJECT_TEMPLATES
from textinv.toy.world.held_out import HELD_OUT_PAIRS
from textinv.toy.world.scenes import Scene, Thing
from textinv.toy.world.words import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, TEXTURES

JITTER = 0.04  # an object's centre moves by up to ±JITTER of the side
_OPPOSITE = {
    "top left": "bottom right",
    "top right": "bottom left",
    "bottom left": "top right",
    "bottom right": "top left",
}


def sample_thing(
    rng: random.Random,
    size: str | None = None,
    position: str | None = None,
    held_out: bool = False,
) -> Thing:
    """A random object; stripes are 30% of objects. Held-out stripe pairs only if asked."""
    size = size or rng.choice(SIZES)
    if position is None:
        position = "center" if size == "large" else rng.choice(POSITIONS)
    colour = rng.choice(COLOUR_NAMES)
    stripe: str | None = None
    if rng.random() < 0.3:
        stripe = rng.choice([c for c in COLOUR_NAMES if c != colour])
        if frozenset({colour, stripe}) in HELD_OUT_PAIRS and not held_out:
            stripe = None
    return Thing(
        shape=rng.choice(SHAPES),
        colour=colour,
        stripe_colour=stripe,
        size=size,
        position=position,
        rotation=rng.uniform(-25.0, 25.0),
        scale=rng.uniform(0.9, 1.1),
        offset=(rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)),
    )


def sample_scene(rng: random.Random, held_out: bool = False, extra_rate: float = 0.15) -> Scene:
    """One scene with its caption; ``extra_rate`` of them have a second, small object.

    With ``held_out`` the held-out stripe pairs are drawn too (for the classifier, which must
    recognise them); the model's training data never has them.
    """
    if rng.random() < extra_rate:
        first = sample_thing(rng, size="small", position=rng.choice(POSITIONS[1:]))
        extra: Thing | None = sample_thing(rng, size="small", position=_OPPOSITE[first.position])
    else:
        first, extra = sample_thing(rng, held_out=held_out), None
    used = first.colours | (extra.colours if extra else frozenset())
    background = rng.choice([c for c in COLOUR_NAMES if c not in used])
    texture = "plain" if rng.random() < 0.55 else rng.choice(TEXTURES[1:])
    scene = Scene(first, background, texture, extra, texture_seed=rng.randrange(2**31))
    return Scene(
        first, background, texture, extra, scene.texture_seed, caption=caption_for(scene, rng)
    )


def caption_for(scene: Scene, rng: random.Random) -> str:
    """A caption; parts are dropped at random so that short prompts work too.

    "a small red star in the top left corner on a blue checkered background", sometimes without
    the size of a large object, the background, or "in the center", sometimes inside one of the
    paper's templates ("a photo of a small red star ...").
    """
    thing = scene.thing
    text = thing.words(with_size=thing.size == "small" or rng.random() < 0.5)
    if thing.position != "center":
        text += f" in the {thing.position} corner"
    elif rng.random() < 0.2:
        text += " in the center"
    if scene.extra is not None:
        text += f" and a {scene.extra.words()}"
    if rng.random() < 0.8 or scene.texture != "plain":
        texture = "" if scene.texture == "plain" else f" {scene.texture}"
        text += f" on a {scene.background}{texture} background"
    if rng.random() < 0.4:
        return rng.choice(OBJECT_TEMPLATES).format(text)
    return f"a {text}"


def sample_scenes(seed: int, count: int) -> list[Scene]:
    """``count`` captioned scenes of the training distribution, from ``seed``."""
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]
