"""The prompts of ``textinv toy eval``: one that reconstructs the concept, and edits of it.

Each edit changes one thing (the background, the size and place, the texture) and knows how to
tell, from the classifier's reading, that the change happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from textinv.toy import world
from textinv.toy.classifier import Reading

RECONSTRUCTION_PROMPT = "a photo of a {}"


@dataclass(frozen=True)
class Edit:
    """A prompt that changes one thing, and the test that the change happened."""

    template: str
    background: str | None = None
    texture: str | None = None
    size: str | None = None
    position: str | None = None

    def applied(self, reading: Reading) -> bool:
        wanted = {
            "background": self.background,
            "texture": self.texture,
            "size": self.size,
            "position": self.position,
        }
        return all(getattr(reading, k) == v for k, v in wanted.items() if v is not None)


def edits_for(thing: world.Thing) -> tuple[Edit, ...]:
    """Three edits whose backgrounds avoid the concept's own colours."""
    free = [c for c in ("green", "white", "blue", "red", "gray") if c not in thing.colours]
    return (
        Edit(f"a {{}} on a {free[0]} background", background=free[0]),
        Edit("a small {} in the top left corner", size="small", position="top left"),
        Edit(
            f"a {{}} on a {free[1]} checkered background", background=free[1], texture="checkered"
        ),
    )


def generic_edits() -> tuple[Edit, ...]:
    """Edits for a concept outside the shapes world: no classifier checks them, CLIP-T may."""
    return (Edit("a {} on the beach"), Edit("a painting of a {}"), Edit("a {} in the snow"))
