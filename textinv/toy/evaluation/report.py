"""What ``textinv toy eval`` reports: one row per prompt kind, as JSON, a table and a grid."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class EvalRow:
    name: str  # "init word", "learned concept", "best caption"
    words: str  # what stands in the prompts for the concept
    reconstruction: float | None = None  # share of images that show the concept
    similarity: float | None = None  # mean partial credit for it (``identity_similarity``)
    edit_applied: float | None = None  # share of edit images where the change happened
    edit_kept: float | None = None  # ... and the concept was kept
    edit_similarity: float | None = None  # ... with partial credit for the concept
    clip_image: float | None = None  # mean cosine, generated vs reference images
    clip_text: float | None = None  # mean cosine, edit images vs prompt without the concept
    dino: float | None = None  # mean cosine of DINO [CLS] features, generated vs reference


@dataclass(frozen=True)
class EvalReport:
    concept: str
    model: str
    rows: tuple[EvalRow, ...]
    prompts: dict[str, list[str]] = field(default_factory=dict)  # row name → its prompts
    images: dict[str, list[Image.Image]] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "model": self.model,
            "rows": [asdict(row) for row in self.rows],
            "prompts": self.prompts,
        }


def format_table(report: EvalReport) -> str:
    """The report as a fixed-width table, one row per prompt kind."""
    columns = [
        ("reconstruction", "reconstruction"),
        ("similarity", "similarity"),
        ("edit_applied", "edit applied"),
        ("edit_kept", "edit + kept"),
        ("edit_similarity", "edit × sim."),
        ("clip_image", "CLIP-I"),
        ("clip_text", "CLIP-T"),
        ("dino", "DINO"),
    ]
    shown = [(k, h) for k, h in columns if any(getattr(r, k) is not None for r in report.rows)]
    width = max(len(f"{r.name} ({r.words})") for r in report.rows)
    header = f"{'row':<{width}}  " + "  ".join(f"{h:>14}" for _, h in shown)
    lines = [header, "-" * len(header)]
    for row in report.rows:
        cells = [_cell(getattr(row, k)) for k, _ in shown]
        label = f"{row.name} ({row.words})"
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def image_grid(report: EvalReport, scale: int = 3) -> Image.Image:
    """One line of images per row of the report, in generation order."""
    lines = list(report.images.values())
    columns = max(len(line) for line in lines)
    side = lines[0][0].size[0] * scale
    grid = Image.new("RGB", (columns * side, len(lines) * side), "white")
    for y, line in enumerate(lines):
        for x, image in enumerate(line):
            grid.paste(image.resize((side, side), Image.Resampling.NEAREST), (x * side, y * side))
    return grid


def save_report(report: EvalReport, folder: Path) -> tuple[Path, Path]:
    """``report.json`` and ``grid.png`` in ``folder``, which is made if needed."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.to_json(), indent=2))
    image_grid(report).save(folder / "grid.png")
    return folder / "report.json", folder / "grid.png"
