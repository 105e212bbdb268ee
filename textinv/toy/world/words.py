"""The shapes world's closed sets of words, and the vocabulary its captions are written in.

Every attribute of a scene is one of these words, so that a caption names it exactly and the
fidelity classifier can read it back; ``vocabulary()`` is what the toy tokenizer is built from.
"""

from __future__ import annotations

from textinv.templates import OBJECT_TEMPLATES

RESOLUTION = 32  # pixels per side of every image of the world

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "arrow")
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


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    """A ``ValueError`` naming ``value`` unless it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(choices)}")


def vocabulary() -> list[str]:
    """Every word the world's captions and the inversion templates use, for the tokenizer."""
    words = {"a", "and", "on", "in", "the", "striped", "background", "corner"}
    words |= set(SHAPES) | set(COLOUR_NAMES) | set(TEXTURES) | set(SIZES)
    words |= {part for position in POSITIONS for part in position.split()}
    for template in OBJECT_TEMPLATES:
        words |= set(template.replace("{}", " ").split())
    return sorted(words)
