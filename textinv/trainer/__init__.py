"""The inversion trainer: learn K new token vectors for a concept from a few images.

DESIGN decisions 2 and 3: only the K new vectors train (one fp32 parameter spliced in after the
embedding lookup), templates are tokenized once and VAE latents encoded once per image and
augmentation variant.

Determinism: one CPU ``torch.Generator`` draws everything the loop samples (images, variants,
templates, latents, noise, timesteps). Checkpoints hold the vectors, the optimizer, the LR schedule,
the loss scaler, the early-stopping history and the generator state, so a resumed run continues
bit-identically on CPU.

``invert(config, progress=..., should_stop=...)`` is the Python API; ``textinv invert`` and the
server's inversion jobs call it. The modules:

- ``config``: ``InvertConfig`` (its fields are ``textinv invert``'s flags) and its checks;
- ``prepare``: every check and one-off cost (model, prompts, latent cache) → a ``Trainer``;
- ``run``: the ``Trainer``: the vectors, the optimizer, the loss and one optimizer step;
- ``batches`` and ``loss``: what a step draws and the denoising objective;
- ``loop``: the training loop, evaluation with DVAR early stopping, progress reports;
- ``run_files``: the output folder's files, the step log and the checkpoints;
- ``validation``: validation grids.
"""

from __future__ import annotations

from collections.abc import Callable

from textinv.concepts import Concept
from textinv.model import BaseModel
from textinv.trainer.config import (
    MAX_TRAIN_VECTORS,
    SD15_SHAPE,
    InvertConfig,
    check_config,
    check_output_folder,
)
from textinv.trainer.loop import Progress, ProgressCallback, dvar_plateau
from textinv.trainer.prepare import (
    frozen_dtype,
    initializer_ids,
    load_model_for,
    prepare,
    resolve_device,
    spread_initializer,
)
from textinv.trainer.run import Trainer
from textinv.trainer.run_files import (
    CHECKPOINT_DIR,
    CONCEPT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    VALIDATION_DIR,
    iter_log,
)
from textinv.trainer.validation import render_grid

__all__ = [
    "CHECKPOINT_DIR",
    "CONCEPT_FILE",
    "CONFIG_FILE",
    "LOG_FILE",
    "MAX_TRAIN_VECTORS",
    "SD15_SHAPE",
    "VALIDATION_DIR",
    "InvertConfig",
    "Progress",
    "ProgressCallback",
    "Trainer",
    "check_config",
    "check_output_folder",
    "dvar_plateau",
    "frozen_dtype",
    "initializer_ids",
    "invert",
    "iter_log",
    "load_model_for",
    "prepare",
    "render_grid",
    "resolve_device",
    "spread_initializer",
]


def invert(
    config: InvertConfig,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    model: BaseModel | None = None,
) -> Concept:
    """Learn ``config.token`` from ``config.images``; write ``config.out``; return the concept.

    ``progress`` is called after every step (and on checkpoints, validation grids and the end);
    when ``should_stop()`` turns true the run checkpoints, writes the concept learned so far and
    returns it. ``model`` reuses an already loaded base model (the server keeps one per process).
    """
    return prepare(config, model).train(progress, should_stop)
