"""Rendering a scene: a pure function of it, so the same seed gives the same pixels everywhere.

Objects are drawn at ``SUPERSAMPLE``× as polygons (``_outline``), painted solid or with stripes that
turn with the object, and box-filtered down for anti-aliased edges; textures are drawn over the
background at full size, except the grain, which is added after the filter.
"""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageDraw

from textinv.toy.world.scenes import Scene, Thing
from textinv.toy.world.words import COLOURS, RESOLUTION, SHAPES

SUPERSAMPLE = 4  # drawn at 4× and box-filtered down, for anti-aliased edges
# Pixels (at RESOLUTION) for one pair of stripes: 8 px bands, two latent cells wide. At 4 px (one
# cell) the VAE blurred a fill into one colour so often that the best caption read 0.66 at most.
STRIPE_PERIOD = 16.0
# Object centre for each position, as a fraction of the side; sampling jitters it (``JITTER``).
_POSITION_XY = {
    "center": (0.5, 0.5),
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
}
_RADIUS = {"small": 0.19, "large": 0.35}  # object radius as a fraction of the side

Point = tuple[float, float]
Polygon = list[Point]


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
    cx, cy = _centre(thing, side)
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float64)
    angle = math.radians(thing.rotation + 45.0)  # diagonal stripes, turned with the object
    # Distance along the stripes' normal from the object's centre, in pixels at RESOLUTION: a
    # band edge runs through the centre, so that every pose shows both colours about evenly.
    along = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) * (RESOLUTION / side)
    band = (np.floor(along / (STRIPE_PERIOD / 2)) % 2 == 1)[..., None]
    return np.where(band, second, first)


def _shape_mask(thing: Thing, side: int) -> np.ndarray:
    """[side, side] float mask of the object, 1 inside."""
    centre = _centre(thing, side)
    radius = _RADIUS[thing.size] * thing.scale * side
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    for polygon, fill in _outline(thing.shape):
        points = [_place(p, centre, radius, thing.rotation) for p in polygon]
        draw.polygon(points, fill=fill)
    return np.asarray(image, dtype=np.float64) / 255.0


def _centre(thing: Thing, side: int) -> Point:
    """The object's centre on a canvas of ``side`` pixels: its position, jittered."""
    cx, cy = _POSITION_XY[thing.position]
    return ((cx + thing.offset[0]) * side, (cy + thing.offset[1]) * side)


def _place(point: Point, centre: Point, radius: float, degrees: float) -> Point:
    """Unit-shape point → canvas point: rotate, scale, move (y grows downwards)."""
    angle = math.radians(degrees)
    x, y = point
    rx = x * math.cos(angle) + y * math.sin(angle)
    ry = -x * math.sin(angle) + y * math.cos(angle)
    return (centre[0] + rx * radius, centre[1] + ry * radius)


def _circle(n: int = 64, r: float = 1.0, cx: float = 0.0, cy: float = 0.0) -> Polygon:
    return [
        (cx + r * math.cos(2 * math.pi * i / n), cy + r * math.sin(2 * math.pi * i / n))
        for i in range(n)
    ]


def _triangle() -> Polygon:
    return [(math.cos(a), math.sin(a) + 0.2) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]


def _star() -> Polygon:
    """Ten points: five tips at radius 1, five notches at 0.45."""
    return [
        (
            (1.0 if i % 2 == 0 else 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
            (1.0 if i % 2 == 0 else 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5) + 0.08,
        )
        for i in range(10)
    ]


def _heart() -> Polygon:
    """The classic parametric heart curve, scaled into the unit circle."""
    points = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x / 16.5, -y / 16.5 - 0.1))
    return points


_CROSS_HALF_WIDTH = 0.32
_SQUARE: Polygon = [(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)]
_ARROW: Polygon = [
    (-0.95, -0.25),
    (0.1, -0.25),
    (0.1, -0.7),
    (0.95, 0.0),
    (0.1, 0.7),
    (0.1, 0.25),
    (-0.95, 0.25),
]


def _outline(shape: str) -> list[tuple[Polygon, int]]:
    """Polygons in unit coordinates (radius 1, y down), each painted (255) or cut out (0)."""
    w = _CROSS_HALF_WIDTH
    outlines = {
        "circle": lambda: [(_circle(), 255)],
        "square": lambda: [(_SQUARE, 255)],
        "triangle": lambda: [(_triangle(), 255)],
        "star": lambda: [(_star(), 255)],
        "heart": lambda: [(_heart(), 255)],
        "cross": lambda: [
            ([(-w, -0.95), (w, -0.95), (w, 0.95), (-w, 0.95)], 255),
            ([(-0.95, -w), (0.95, -w), (0.95, w), (-0.95, w)], 255),
        ],
        "arrow": lambda: [(_ARROW, 255)],
    }
    if shape not in outlines:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return outlines[shape]()
