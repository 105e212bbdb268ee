"""What a shapes-world image shows: a frozen ``Thing`` (one object) on a ``Scene``'s background."""

from __future__ import annotations

from dataclasses import dataclass

from textinv.toy.world.words import (
    COLOUR_NAMES,
    POSITIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    check_choice,
)


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
        check_choice("shape", self.shape, SHAPES)
        check_choice("colour", self.colour, COLOUR_NAMES)
        if self.stripe_colour is not None:
            check_choice("stripe colour", self.stripe_colour, COLOUR_NAMES)
            if self.stripe_colour == self.colour:
                raise ValueError(f"a striped object needs two colours, got {self.colour!r} twice")
        check_choice("size", self.size, SIZES)
        check_choice("position", self.position, POSITIONS)

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
        check_choice("background", self.background, COLOUR_NAMES)
        check_choice("texture", self.texture, TEXTURES)
