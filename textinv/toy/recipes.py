"""The settings that learn a held-out concept on the embedded model, for the demo, the tests and
``textinv bench time-to-concept``, which compares them with diffusers' README recipe.

The default was chosen by ``textinv bench time-to-concept`` on ``<toy-stripes>`` (64 + 3 × 24
images per reading, Intel Xeon, 2 threads). A pull toward the init word's vector trades likeness
for editability: without it the learned vector outgrows the vocabulary's range and prompts stop
following edits. After 800 steps at batch 4:

| lr, pull | reconstruction | edit applied | edit + kept |
|---|---|---|---|
| 2e-3, 0.02 (the earlier default, 600 steps) | 0.09 | 0.90 | 0.12 |
| 2e-3, 0 | 0.48 | 0.29 | 0.03 |
| 1e-2, 0 | 0.64 | 0.24 | 0.06 |
| 1e-2, 0.005 | 0.42 | 0.28 | 0.11 |
| 1e-2, 0.01 (the default) | 0.47 | 0.54 | 0.15 |
| 1e-2, 0.005, 2 vectors | 0.83 | 0.29 | 0.12 |

The best caption itself reads 0.69, 0.96 and 0.28.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from textinv.toy import DEMO_CONCEPT, concept_image_paths, default_model_path, world
from textinv.trainer import InvertConfig
from textinv.trainer.config import InitMethod
from textinv_client.choices import LrSchedule

INVERSION_STEPS = 800
INVERSION_LR = 2e-3
INVERSION_VECTORS = 5  # as many as the words of the best captions
# The pull toward the init word's vector (``embedding_reg_weight``): see the table above.
EMBEDDING_REG = 0.01


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
        vectors=INVERSION_VECTORS,
        batch_size=4,
        grad_accum=1,
        lr=INVERSION_LR,
        embedding_reg_weight=EMBEDDING_REG,
        checkpoint_every=0,
        seed=seed,
    )


# diffusers' README recipe for ``textual_inversion.py``, run by our trainer: lr 5e-4 with
# ``--scale_lr`` at batch 1 and gradient accumulation 4 (2e-3 in effect), a constant schedule,
# 3000 steps, one vector from the init word's row, no regularizer.
DIFFUSERS_README: dict[str, Any] = {
    "vectors": 1,
    "batch_size": 1,
    "grad_accum": 4,
    "lr": 5e-4,
    "scale_lr": True,
    "lr_schedule": LrSchedule.CONSTANT,
    "warmup": 0,
    "embedding_reg_weight": 0.0,
}
# name → (its settings over ``inversion_config``'s, its steps)
RECIPES: dict[str, tuple[dict[str, Any], int]] = {
    "default": ({}, INVERSION_STEPS),
    "diffusers": (DIFFUSERS_README, 3000),
    # Started by Cross Initialization, with its regularizer instead of the squared pull.
    "cross": ({"init_method": InitMethod.CROSS, "embedding_reg_weight": 0.0}, INVERSION_STEPS),
    # DVAR early stopping (a window of 10 evaluations, 25 steps apart) within twice the budget.
    "dvar": ({"early_stop": 10}, 2 * INVERSION_STEPS),
    # The default until the world was redrawn: one vector at lr 1e-2.
    "one-vector": ({"vectors": 1, "lr": 1e-2}, INVERSION_STEPS),
}


def recipe_config(
    recipe: str,
    out: Path,
    concept: str = DEMO_CONCEPT,
    steps: int | None = None,
    seed: int = 0,
) -> InvertConfig:
    """The ``InvertConfig`` of a named recipe (``RECIPES``) for a held-out concept; ``steps``
    None: the recipe's own."""
    changes, own_steps = RECIPES[recipe]
    base = inversion_config(out, concept, steps or own_steps, seed=seed)
    return replace(base, **changes)
