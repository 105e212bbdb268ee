"""diffusers' own ``StableDiffusionXLPipeline`` as the reference for SDXL parity tests, with
SDXL concepts loaded as users load them: the file (``clip_l`` / ``clip_g``) read back, then
``load_textual_inversion`` once per text encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from textinv.concepts import Concept, ConceptFormat, concept_to_bytes, parse_concept
from textinv.sdxl_text import SdxlConcepts
from textinv.testing_sdxl import TINY_SDXL_WIDTHS


def sdxl_concepts(seed: int) -> list[Concept]:
    """``<cat-toy>`` (2 vectors) and ``<dog-style>`` (1), each with both widths' vectors."""
    generator = torch.Generator().manual_seed(seed)
    width_l, width_g = TINY_SDXL_WIDTHS
    return [
        Concept(
            token,
            torch.randn(k, width_l, generator=generator),
            vectors_2=torch.randn(k, width_g, generator=generator),
        )
        for token, k in (("<cat-toy>", 2), ("<dog-style>", 1))
    ]


def registered(concepts: list[Concept]) -> SdxlConcepts:
    return SdxlConcepts(
        {c.token: c.vectors for c in concepts},
        {c.token: c.vectors_2 for c in concepts if c.vectors_2 is not None},
    )


def sdxl_reference_pipeline(folder: Path, concepts: list[Concept]) -> Any:
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    for concept in concepts:
        stored = parse_concept(concept_to_bytes(concept, ConceptFormat.SDXL), "c.safetensors")
        assert stored.token == concept.token and stored.source_format is ConceptFormat.SDXL
        assert stored.vectors_2 is not None
        tokens = concept.expanded_tokens()
        for vectors, encoder, tokenizer in (
            (stored.vectors, pipeline.text_encoder, pipeline.tokenizer),
            (stored.vectors_2, pipeline.text_encoder_2, pipeline.tokenizer_2),
        ):
            pipeline.load_textual_inversion(
                list(vectors), token=tokens, text_encoder=encoder, tokenizer=tokenizer
            )
    return pipeline
