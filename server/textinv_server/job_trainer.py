"""The trainer as inversion jobs call it, and the worker threads' lower priority."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textinv.model import BaseModel
from textinv_client.types import JobProgress

log = logging.getLogger(__name__)

JOB_NICENESS = 10

# The trainer, as the job manager calls it: (params, images folder, output folder, resume,
# progress, on_files, should_stop) → the learned concept. ``textinv_trainer`` is the real one.
# ``on_files`` runs after each checkpoint or validation grid is written (it may raise to end
# the run); ``should_stop`` is asked after every step and between micro-batches.
TrainFn = Callable[..., Any]


def lower_priority() -> None:
    """Nice this thread (Linux threads have their own priority), so generation wins the CPU."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICENESS)
    except (AttributeError, OSError):
        log.debug("could not lower the job thread's priority", exc_info=True)


def textinv_trainer(model: BaseModel | None, model_name: str | None) -> TrainFn:
    """The real trainer (``textinv.trainer.invert``), sharing the server's loaded model."""
    from textinv.trainer import InvertConfig, Progress, invert

    def train(
        *,
        params: dict[str, Any],
        images: Path,
        out: Path,
        resume: bool,
        progress: Callable[[JobProgress], None],
        on_files: Callable[[], None],
        should_stop: Callable[[], bool],
    ) -> Any:
        config = InvertConfig(
            **params, images=str(images), out=str(out), model=model_name, resume=resume
        )

        def report(event: Progress) -> None:
            if event.event in ("checkpoint", "validation"):
                on_files()
            elif event.event == "step":
                progress(
                    JobProgress(
                        step=event.step,
                        total_steps=event.total_steps,
                        loss=event.loss,
                        learning_rate=event.lr,
                        steps_per_second=event.steps_per_s,
                        # 0 while unknown: the trainer's ETA is infinite before a rate exists
                        eta_seconds=event.eta_s if event.eta_s < 1e12 else 0.0,
                    )
                )

        return invert(config, report, should_stop, model=model_for(config, model))

    return train


def model_for(config: Any, model: BaseModel | None) -> BaseModel | None:
    """The server's model when it is in the precision the job resolves to; else None (the job
    loads its own copy, as the trainer would alone)."""
    from textinv.trainer import frozen_dtype

    if model is None:
        return None
    wanted = frozen_dtype(config, model.unet.device, model)
    return model if wanted == model.unet.dtype else None
