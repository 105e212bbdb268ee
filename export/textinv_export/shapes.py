"""Shapes and ranges: what a deployment serves, and the symbolic shapes of graph inputs and outputs.

A ``Range`` is an inclusive ``(min, opt, max)`` size; ``ShapeRanges`` are a deployment's
(images per call, image side in pixels, 77-token prompt chunks). A ``TensorSpec`` names one graph
tensor with a symbolic shape (ints fixed, strings dynamic axes) and a ``ShapeProfile`` is one
input's concrete ``(min, opt, max)`` shapes, as a TensorRT optimization profile takes them.
The per-component specs that combine them live in ``textinv_export.specs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textinv.errors import InvalidInputError
from textinv_export.records import Record

RESOLUTION_MULTIPLE = 8  # every image side a deployment declares is a multiple of 8
# Prompt chunks a deployment may declare: 8 × 77 = 616 tokens bounds the UNet's cross-attention.
MAX_PROMPT_CHUNKS = 8

# A symbolic shape: ints are fixed sizes, strings name dynamic axes ("batch", "height", ...).
Dim = int | str
Shape = tuple[int, ...]


@dataclass(frozen=True)
class Range:
    """An inclusive ``(min, opt, max)`` range of one size; ``opt`` is what engines tune for."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 1:
            raise InvalidInputError(f"range {self} must start at 1 or more, not {self.min}")
        if not self.min <= self.opt <= self.max:
            raise InvalidInputError(f"range {self} must satisfy MIN ≤ OPT ≤ MAX")

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"

    @classmethod
    def parse(cls, text: str, what: str = "range") -> Range:
        """``"1:2:4"`` → ``Range(1, 2, 4)``; ``"4"`` → ``Range(4, 4, 4)``."""
        parts = text.split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise InvalidInputError(f"{what} {text!r} is not MIN:OPT:MAX (three whole numbers)")
        low, opt, high = (int(p) for p in parts)
        if low > high:
            raise InvalidInputError(f"{what} {text!r} has MIN {low} > MAX {high}")
        if not low <= opt <= high:
            raise InvalidInputError(f"{what} {text!r} has OPT {opt} outside [{low}, {high}]")
        return cls(low, opt, high)

    def scaled(self, min_factor: int, factor: int) -> Range:
        return Range(self.min * min_factor, self.opt * factor, self.max * factor)

    def divided(self, divisor: int) -> Range:
        return Range(self.min // divisor, self.opt // divisor, self.max // divisor)


def check_sides(sides: Range, multiple: int, why: str = "") -> None:
    """Raise ``InvalidInputError`` unless every image side in ``sides`` (min, opt and max) is a
    multiple of ``multiple``; ``why`` ends the message."""
    for value in (sides.min, sides.opt, sides.max):
        if value % multiple:
            raise InvalidInputError(
                f"resolution {value} in {sides} is not a multiple of {multiple}{why}"
            )


@dataclass(frozen=True)
class ShapeRanges:
    """What a deployment must serve: images per call, the image side in pixels, and the most
    77-token prompt chunks (long prompts, ``PromptSyntax.A1111``) a prompt may take."""

    batch: Range = Range(1, 1, 4)
    resolution: Range = Range(512, 512, 768)
    prompt_chunks: int = 3

    def __post_init__(self) -> None:
        check_sides(self.resolution, RESOLUTION_MULTIPLE)
        if not 1 <= self.prompt_chunks <= MAX_PROMPT_CHUNKS:
            raise InvalidInputError(
                f"prompt chunks {self.prompt_chunks} must be between 1 and {MAX_PROMPT_CHUNKS}"
            )

    def to_dict(self) -> dict[str, str]:
        return {
            "batch": str(self.batch),
            "resolution": str(self.resolution),
            "prompt_chunks": str(self.prompt_chunks),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> ShapeRanges:
        """A manifest written before long prompts has no ``prompt_chunks``: its graphs take one."""
        return cls(
            batch=Range.parse(data["batch"], "batch sizes"),
            resolution=Range.parse(data["resolution"], "resolutions"),
            prompt_chunks=parse_count(data.get("prompt_chunks", "1"), "prompt chunks"),
        )


def parse_count(text: str, what: str) -> int:
    """A whole number of at least 1, or ``InvalidInputError`` naming ``what``."""
    if not text.strip().isdigit() or int(text) < 1:
        raise InvalidInputError(f"{what} {text!r} is not a whole number of at least 1")
    return int(text)


@dataclass(frozen=True)
class TensorSpec(Record):
    """One graph input or output: its name, dtype and symbolic shape."""

    name: str
    dtype: str  # a numpy dtype name: "float32" or "int64"
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: dim for axis, dim in enumerate(self.shape) if isinstance(dim, str)}

    def concrete(self, sizes: Mapping[str, int]) -> Shape:
        """The shape with each dynamic axis replaced by ``sizes[name]``."""
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ShapeProfile(Record):
    """The ``(min, opt, max)`` concrete shapes of one input, as a TensorRT profile takes them."""

    min: Shape
    opt: Shape
    max: Shape
