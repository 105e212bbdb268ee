"""The settings that learn a held-out concept on the embedded model, for the demo and the tests.

On this model a word's vector has a norm of about 0.35-0.45. SD's 5e-3 throws the learned vector far
out of that range within a hundred steps; 2e-3 with a small pull toward the init word keeps it in.
"""

from __future__ import annotations

from pathlib import Path

from textinv.toy import DEMO_CONCEPT, concept_image_paths, default_model_path, world
from textinv.trainer import InvertConfig

INVERSION_STEPS = 600
INVERSION_LR = 2e-3
# A pull toward the init word's vector keeps the learned one in the vocabulary's range (norm about
# 0.4 rather than 0.75 without it), which keeps prompts editable at the same likeness.
EMBEDDING_REG = 0.02


def inversion_config(
    out: Path,
    concept: str = DEMO_CONCEPT,
    steps: int = INVERSION_STEPS,
    model: Path | None = None,
    seed: int = 0,
) -> InvertConfig:
    """An ``InvertConfig`` for a held-out concept from its 4 bundled images (batch 4, fp32)."""
    held_out = world.held_out_concept(concept)
    return InvertConfig(
        images=str(concept_image_paths(held_out.name)[0].parent),
        token=held_out.token,
        init=held_out.init_word,
        out=str(out),
        model=str(model or default_model_path()),
        steps=steps,
        batch_size=4,
        grad_accum=1,
        lr=INVERSION_LR,
        embedding_reg_weight=EMBEDDING_REG,
        checkpoint_every=0,
        seed=seed,
    )
