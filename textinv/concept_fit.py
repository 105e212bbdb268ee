"""Whether a concept fits a model: one set of vectors per text encoder, each of its width.

An SD 1.x/2.x model has one text encoder and takes ``[K, D]``; SDXL has two and takes
``clip_l [K, D1]`` with ``clip_g [K, D2]``. SDXL's first width is SD 1.x's (768 at full size),
so a width check alone would let one family's file into the other's model: the number of sets is
checked too, and the error names both widths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from textinv.concept_table import ConceptTable
from textinv.concepts import Concept, load_concept, parse_concept
from textinv.errors import ConceptFileError
from textinv.sdxl_text import SdxlConcepts

Widths = tuple[int, ...]  # per text encoder: (D,) or SDXL's (D1, D2)


def parse_for_model(data: bytes, source: str, widths: Widths, **options: Any) -> Concept:
    """``parse_concept`` with the model's widths checked (``options``: the other arguments)."""
    first, second = _width_options(widths)
    concept = parse_concept(data, source, expected_width=first, expected_width_2=second, **options)
    check_concept_fits(concept, widths, source)
    return concept


def load_for_model(path: str | Path, widths: Widths, **options: Any) -> Concept:
    """``load_concept`` with the model's widths checked."""
    first, second = _width_options(widths)
    concept = load_concept(path, expected_width=first, expected_width_2=second, **options)
    check_concept_fits(concept, widths, Path(path).name)
    return concept


def per_encoder(concepts: Iterable[Concept], sdxl: bool) -> ConceptTable | SdxlConcepts:
    """Checked concepts as the pipeline takes them: ``{token: [K, D]}`` (a ``ConceptTable``),
    or for SDXL each encoder's table."""
    concepts = list(concepts)
    first = ConceptTable({c.token: c.vectors for c in concepts})
    if not sdxl:
        return first
    second = {c.token: c.vectors_2 for c in concepts if c.vectors_2 is not None}
    return SdxlConcepts(first, ConceptTable(second))


def concept_widths(concept: Concept) -> Widths:
    second = () if concept.vectors_2 is None else (int(concept.vectors_2.shape[1]),)
    return (concept.width, *second)


def check_concept_fits(concept: Concept, widths: Sequence[int], source: str) -> None:
    """One set per text encoder; ``ConceptFileError`` naming both sides' widths if not."""
    own = concept_widths(concept)
    if len(own) == len(widths):
        return  # parse_concept checked each width
    if len(widths) == 2:
        raise ConceptFileError(
            f"{source}: one set of {own[0]}-wide vectors (an SD 1.x/2.x concept); this SDXL "
            f"model needs clip_l ({widths[0]}) and clip_g ({widths[1]}) vectors"
        )
    raise ConceptFileError(
        f"{source}: an SDXL concept (clip_l {own[0]}, clip_g {own[1]} wide); this model has "
        f"one text encoder and takes one set of {widths[0]}-wide vectors"
    )


def _width_options(widths: Widths) -> tuple[int, int | None]:
    return widths[0], widths[1] if len(widths) > 1 else None
