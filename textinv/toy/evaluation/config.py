"""The settings of one ``textinv toy eval`` run: torch-free, for the command line to read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from textinv.toy import DEFAULT_GUIDANCE
from textinv_client.flags import flag


@dataclass(frozen=True)
class EvalConfig:
    concept: Path = field(metadata=flag("a learned concept file"))  # any format textinv reads
    model: Path | None = field(  # None: the embedded shapes-world model
        default=None, metadata=flag("a diffusers folder (default: embedded model)")
    )
    target: str | None = field(  # None: the held-out concept its token names
        default=None, metadata=flag("the held-out concept it should show (default: token)")
    )
    init_word: str | None = field(
        default=None, metadata=flag("the init word row's word (default: the target's)")
    )
    images_per_prompt: int = field(
        default=8, metadata=flag("images per prompt", name="--images", metavar="IMAGES")
    )
    steps: int = field(default=25, metadata=flag("denoising steps"))
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata=flag("classifier-free guidance"))
    seed: int = field(default=0, metadata=flag("seed of each prompt's first image (then +1, …)"))
    clip: Path | None = field(  # for the paper's CLIP similarities
        default=None, metadata=flag("a local CLIPModel folder for CLIP-I/CLIP-T")
    )
    clip_images: tuple[Path, ...] = field(
        default=(), metadata=flag("reference images for CLIP-I", nargs="*")
    )
    classifier: Path | None = None  # None: the shipped fidelity classifier
    edits: bool = True  # False: reconstruction only (a quicker check)
    dino: Path | None = field(  # for DINO image similarity
        default=None, metadata=flag("a local DINO (ViT) folder for DINO similarity")
    )

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt must be at least 1, got {self.images_per_prompt}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
