"""The shapes world: a seeded procedural renderer of captioned images for the embedded model.

A scene is one object (a shape, a solid colour or a two-colour stripe fill, a size, a position
and a rotation) on a background (a plain colour or a texture), sometimes with a second object.
``sample_scene(rng)`` draws every random choice into a frozen ``Scene``; ``render(scene)`` is a
pure function of it, so the same seed gives the same pixels on every machine.

Held-out concepts (``HELD_OUT``) are things no single word of the vocabulary names: a particular
two-colour stripe fill, and a shape that has no word. ``sample_scene`` never draws them; the demo
and ``textinv toy eval`` learn them by inversion from ``concept_images``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from textinv.templates import OBJECT_TEMPLATES

RESOLUTION = 32  # pixels per side of every image of the world
SUPERSAMPLE = 4  # drawn at 4× and box-filtered down, for anti-aliased edges
STRIPE_PERIOD = 8.0  # pixels (at RESOLUTION) for one pair of stripes: 4 px bands, one latent cell

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "arrow")
HELD_OUT_SHAPES: tuple[str, ...] = ("moon",)  # a crescent: drawable, but no word names it
ALL_SHAPES: tuple[str, ...] = SHAPES + HELD_OUT_SHAPES
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 225, 40),
    "orange": (245, 140, 25),
    "purple": (140, 50, 185),
    "pink": (250, 150, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
TEXTURES: tuple[str, ...] = ("plain", "checkered", "dotted", "grainy")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("center", "top left", "top right", "bottom left", "bottom right")
# Object centre for each position, as a fraction of the side; jittered by up to ±JITTER.
_POSITION_XY = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
_OPPOSITE = {
    "top left": "bottom right",
    "top right": "bottom left",
    "bottom left": "top right",
    "bottom right": "top left",
}
_RADIUS = {"small": 0.19, "large": 0.35}  # object radius as a fraction of the side
JITTER = 0.04


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


@dataclass(frozen=True)
class Thing:
    """One object. ``stripe_colour`` set means a two-colour stripe fill (``colour`` first)."""

    shape: str
    colour: str
    stripe_colour: str | None = None
    size: str = "large"
    position: str = "center"
    rotation: float = 0.0  # degrees, counter-clockwise
    scale: float = 1.0  # size jitter around the nominal radius
    offset: tuple[float, float] = (0.0, 0.0)  # position jitter, fraction of the side

    def __post_init__(self) -> None:
        _check_choice("shape", self.shape, ALL_SHAPES)
        _check_choice("colour", self.colour, COLOUR_NAMES)
        if self.stripe_colour is not None:
            _check_choice("stripe colour", self.stripe_colour, COLOUR_NAMES)
            if self.stripe_colour == self.colour:
                raise ValueError(f"a striped object needs two colours, got {self.colour!r} twice")
        _check_choice("size", self.size, SIZES)
        _check_choice("position", self.position, POSITIONS)

    @property
    def colours(self) -> frozenset[str]:
        return frozenset({self.colour} | ({self.stripe_colour} if self.stripe_colour else set()))

    def words(self, with_size: bool = True) -> str:
        """``small red star`` or ``large yellow and purple striped circle``."""
        fill = self.colour
        if self.stripe_colour is not None:
            fill = f"{self.colour} and {self.stripe_colour} striped"
        return f"{self.size} {fill} {self.shape}" if with_size else f"{fill} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Everything ``render`` needs, and the caption that describes it."""

    thing: Thing
    background: str
    texture: str = "plain"
    extra: Thing | None = None
    texture_seed: int = 0  # phase of the checkers and dots, and the grain's noise
    caption: str = ""

    def __post_init__(self) -> None:
        _check_choice("background", self.background, COLOUR_NAMES)
        _check_choice("texture", self.texture, TEXTURES)


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


def vocabulary() -> list[str]:
    """Every word the world's captions and the inversion templates use, for the tokenizer."""
    words = {"a", "and", "on", "in", "the", "striped", "background", "corner"}
    words |= set(SHAPES) | set(COLOUR_NAMES) | set(TEXTURES) | set(SIZES)
    words |= {part for position in POSITIONS for part in position.split()}
    for template in OBJECT_TEMPLATES:
        words |= set(template.replace("{}", " ").split())
    return sorted(words)


# 1. Sampling scenes (the training distribution: never a held-out concept)


def sample_thing(
    rng: random.Random,
    size: str | None = None,
    position: str | None = None,
    held_out: bool = False,
) -> Thing:
    """A random object; stripes are 30% of objects. Held-out shapes and fills only if asked."""
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
        shape=rng.choice(ALL_SHAPES if held_out else SHAPES),
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

    With ``held_out`` the held-out shapes and fills are drawn too (for the classifier, which must
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
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(count)]


# 2. Rendering


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """The scene as an RGB image of ``resolution``² pixels; a pure function of ``scene``."""
    side = resolution * SUPERSAMPLE
    canvas = _background(scene, side)  # [side, side, 3] float
    for thing in (scene.thing, scene.extra):
        if thing is not None:
            mask = _shape_mask(thing, side)[..., None]  # [side, side, 1] in [0, 1]
            canvas = canvas * (1.0 - mask) + _fill(thing, side) * mask
    # Box-filter down: [side, side, 3] → [resolution, resolution, 3].
    small = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    if scene.texture == "grainy":
        noise = np.random.default_rng(scene.texture_seed).normal(0.0, 14.0, small.shape[:2])
        small = small + _background_mask(scene, resolution)[..., None] * noise[..., None]
    return Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8), "RGB")


def _shade(colour: str) -> np.ndarray:
    """The texture's second tone: darker for light colours, lighter for dark ones."""
    rgb = np.array(COLOURS[colour], dtype=np.float64)
    if rgb.mean() > 100:
        return rgb * 0.72
    return rgb + (255.0 - rgb) * 0.3


def _background(scene: Scene, side: int) -> np.ndarray:
    base = np.array(COLOURS[scene.background], dtype=np.float64)
    canvas = np.broadcast_to(base, (side, side, 3)).copy()
    rng = random.Random(scene.texture_seed)
    ys, xs = np.mgrid[0:side, 0:side] * (RESOLUTION / side)  # in pixels at RESOLUTION
    if scene.texture == "checkered":
        cell, dx, dy = 8.0, rng.uniform(0, 8), rng.uniform(0, 8)
        mask = ((np.floor((xs + dx) / cell) + np.floor((ys + dy) / cell)) % 2) == 1
        canvas[mask] = _shade(scene.background)
    elif scene.texture == "dotted":
        spacing, dx, dy = 6.0, rng.uniform(0, 6), rng.uniform(0, 6)
        fx = (xs + dx) % spacing - spacing / 2
        fy = (ys + dy) % spacing - spacing / 2
        canvas[fx**2 + fy**2 < 1.4**2] = _shade(scene.background)
    return canvas


def _background_mask(scene: Scene, resolution: int) -> np.ndarray:
    """1 where the background shows, at ``resolution`` (for the grain)."""
    side = resolution * SUPERSAMPLE
    covered = np.zeros((side, side))
    for thing in (scene.thing, scene.extra):
        if thing is not None:
            covered = np.maximum(covered, _shape_mask(thing, side))
    small = covered.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE).mean(axis=(1, 3))
    return 1.0 - small


def _fill(thing: Thing, side: int) -> np.ndarray:
    """The object's paint over the whole canvas: solid, or stripes turning with the object."""
    first = np.array(COLOURS[thing.colour], dtype=np.float64)
    if thing.stripe_colour is None:
        return np.broadcast_to(first, (side, side, 3))
    second = np.array(COLOURS[thing.stripe_colour], dtype=np.float64)
    ys, xs = np.mgrid[0:side, 0:side] * (RESOLUTION / side)
    angle = math.radians(thing.rotation + 45.0)  # diagonal stripes, turned with the object
    along = xs * math.cos(angle) + ys * math.sin(angle)
    band = (np.floor(along / (STRIPE_PERIOD / 2)) % 2 == 1)[..., None]
    return np.where(band, second, first)


def _shape_mask(thing: Thing, side: int) -> np.ndarray:
    """[side, side] float mask of the object, 1 inside."""
    cx, cy = _POSITION_XY[thing.position]
    centre = ((cx + thing.offset[0]) * side, (cy + thing.offset[1]) * side)
    radius = _RADIUS[thing.size] * thing.scale * side
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    for polygon, fill in _outline(thing.shape):
        points = [_place(p, centre, radius, thing.rotation) for p in polygon]
        draw.polygon(points, fill=fill)
    return np.asarray(image, dtype=np.float64) / 255.0


def _place(
    point: tuple[float, float], centre: tuple[float, float], radius: float, degrees: float
) -> tuple[float, float]:
    """Unit-shape point → canvas point: rotate, scale, move (y grows downwards)."""
    angle = math.radians(degrees)
    x, y = point
    rx = x * math.cos(angle) + y * math.sin(angle)
    ry = -x * math.sin(angle) + y * math.cos(angle)
    return (centre[0] + rx * radius, centre[1] + ry * radius)


def _circle(n: int = 64, r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> list:
    return [
        (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
        for i in range(n)
    ]


def _outline(shape: str) -> list[tuple[list[tuple[float, float]], int]]:
    """Polygons in unit coordinates (radius 1, y down), each painted (255) or cut out (0)."""
    if shape == "circle":
        return [(_circle(), 255)]
    if shape == "square":
        return [([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)], 255)]
    if shape == "triangle":
        points = [
            (math.cos(a), math.sin(a) + 0.2) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
        return [(points, 255)]
    if shape == "star":
        points = [
            (
                (1.0 if i % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5) + 0.08,
            )
            for i in range(10)
        ]
        return [(points, 255)]
    if shape == "heart":
        points = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((x / 16.5, -y / 16.5 - 0.1))
        return [(points, 255)]
    if shape == "cross":
        w = 0.32
        return [
            ([(-w, -0.95), (w, -0.95), (w, 0.95), (-w, 0.95)], 255),
            ([(-0.95, -w), (0.95, -w), (0.95, w), (-0.95, w)], 255),
        ]
    if shape == "arrow":
        points = [
            (-0.95, -0.25),
            (0.1, -0.25),
            (0.1, -0.7),
            (0.95, 0.0),
            (0.1, 0.7),
            (0.1, 0.25),
            (-0.95, 0.25),
        ]
        return [(points, 255)]
    if shape == "moon":
        return [(_circle(), 255), (_circle(r=0.8, cx=0.45, cy=-0.2), 0)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(ALL_SHAPES)}")


# 3. Held-out concepts


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


BUNDLED_RESOLUTION = 64  # the inversion trainer wants images of at least 64 px a side


def concept_images(
    concept: HeldOutConcept, count: int = 4, seed: int = 0, resolution: int = BUNDLED_RESOLUTION
) -> list[Image.Image]:
    """The concept's training images, drawn at ``resolution`` (the model works at 32 px)."""
    return [render(scene, resolution) for scene in concept_scenes(concept, count, seed)]


def held_out_concept(name: str) -> HeldOutConcept:
    name = name.strip("<>")
    if name not in HELD_OUT:
        raise LookupError(f"unknown held-out concept {name!r}; known: {', '.join(HELD_OUT)}")
    return HELD_OUT[name]
