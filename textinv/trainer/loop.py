"""The training loop: optimizer steps, evaluation with DVAR early stopping, the step log,
checkpoints and validation grids, each step reported to a ``progress`` callback."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import torch

from textinv.concepts import Concept
from textinv.trainer.run_files import CONCEPT_FILE, LOG_FILE, save_checkpoint, start_run_files

if TYPE_CHECKING:
    from textinv.trainer.run import Trainer

log = logging.getLogger("textinv.trainer")


@dataclass(frozen=True)
class Progress:
    """What the trainer reports after every step."""

    step: int
    total_steps: int
    loss: float
    lr: float
    elapsed_s: float
    steps_per_s: float
    eta_s: float
    eval_loss: float | None = None
    event: str = "step"  # "step", "checkpoint", "validation", "early_stop", "stopped", "done"
    path: str | None = None  # the file a checkpoint or validation event wrote


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class _Clock:
    """When this session of the run started, and at which step (a resume starts past 0)."""

    started: float
    first_step: int
    total_steps: int

    def progress(
        self, step: int, loss: float, lr: float, now: float, eval_loss: float | None
    ) -> Progress:
        rate = (step - self.first_step) / max(now - self.started, 1e-9)  # steps/s this session
        return Progress(
            step=step,
            total_steps=self.total_steps,
            loss=loss,
            lr=lr,
            elapsed_s=now - self.started,
            steps_per_s=rate,
            eta_s=(self.total_steps - step) / rate if rate > 0 else math.inf,
            eval_loss=eval_loss,
        )


def dvar_plateau(history: Sequence[float], window: int, threshold: float) -> bool:
    """DVAR's rule: stop when Var(last ``window`` losses) / Var(all losses) < ``threshold``.

    Needs at least two windows of history, so a short noisy start never triggers it.
    """
    if window < 2 or len(history) < 2 * window:
        return False
    values = torch.tensor(list(history), dtype=torch.float64)
    total = float(values.var())
    if total == 0.0:
        return True
    return float(values[-window:].var()) / total < threshold


def train_loop(
    trainer: Trainer,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Concept:
    """Run ``trainer`` to ``config.steps`` (or an early or requested stop); write the concept."""
    # 1. The output folder: cleared (--overwrite) or resumed from its newest checkpoint.
    trainer.out.mkdir(parents=True, exist_ok=True)
    start_run_files(trainer)
    # 2. The steps, with the UNet's gradient checkpointing on for exactly their duration.
    with _gradient_checkpointing(trainer.model.unet, trainer.config.gradient_checkpointing):
        return _run_steps(trainer, progress or _ignore, should_stop or _never)


def _run_steps(
    trainer: Trainer, report: ProgressCallback, should_stop: Callable[[], bool]
) -> Concept:
    state = trainer.state
    clock = _Clock(time.perf_counter(), state.step, trainer.config.steps)
    event = "early_stop" if state.stopped_early else "done"
    with open(trainer.out / LOG_FILE, "a", encoding="utf-8") as log_file:
        while trainer.state.step < clock.total_steps and not trainer.state.stopped_early:
            # 1. One optimizer step, its evaluation and its log line; a stop between its
            #    micro-batches drops it whole, and the last complete step is checkpointed.
            info = _step(trainer, log_file, clock, should_stop)
            if info is None:
                _checkpoint_at_stop(trainer, report, clock)
                event = "stopped"
                break
            report(info)
            if not math.isfinite(info.loss):
                raise FloatingPointError(
                    f"the loss became {info.loss} at step {info.step}; lower --lr or use fp32"
                )
            # 2. Checkpoint and validation grid, on schedule and on the last step.
            stop = should_stop()
            last = info.step >= clock.total_steps or trainer.state.stopped_early or stop
            _write_outputs(trainer, info, report, last)
            # 3. An early stop (DVAR) or a requested one ends the loop.
            if trainer.state.stopped_early:
                event = "early_stop"
                log.info("early stop at step %d: the evaluation loss plateaued", info.step)
                break
            if stop:
                event = "stopped"
                break
    # 4. The concept learned so far, then the final report.
    concept = trainer.write_concept()
    report(_final_progress(trainer, clock, event))
    return concept


def _step(
    trainer: Trainer, log_file: TextIO, clock: _Clock, should_stop: Callable[[], bool]
) -> Progress | None:
    """One optimizer step, then the evaluation it is due, then its line in the step log;
    ``None`` when a stop came between its micro-batches (nothing of it was applied)."""
    step_started = time.perf_counter()
    loss = trainer._optimizer_step(should_stop)
    if loss is None:
        return None
    trainer.state.step += 1
    step = trainer.state.step
    now = time.perf_counter()
    eval_loss = _evaluate(trainer, step)
    lr = trainer.lr_at(step - 1)
    record: dict[str, Any] = {
        "step": step,
        "loss": loss,
        "lr": lr,
        "seconds": round(now - step_started, 6),
    }
    if eval_loss is not None:
        record["eval_loss"] = eval_loss
    log_file.write(json.dumps(record) + "\n")
    log_file.flush()
    return clock.progress(step, loss, lr, now, eval_loss)


def _checkpoint_at_stop(trainer: Trainer, report: ProgressCallback, clock: _Clock) -> None:
    """After a stop mid-step: a checkpoint of the last complete step, so a resume starts there."""
    if not trainer.config.checkpoint_every:
        return
    path = save_checkpoint(trainer)
    info = _final_progress(trainer, clock, "checkpoint")
    report(dataclasses.replace(info, path=str(path)))


def _evaluate(trainer: Trainer, step: int) -> float | None:
    """The fixed batch's loss when ``step`` is an evaluation step; DVAR decides on a stop."""
    config, state = trainer.config, trainer.state
    every = config.effective_eval_every
    if not every or step % every:
        return None
    eval_loss = trainer.evaluation_loss()
    state.eval_history.append(eval_loss)
    if config.early_stop and dvar_plateau(
        state.eval_history, config.early_stop, config.early_stop_threshold
    ):
        state.stopped_early = True
    return eval_loss


def _write_outputs(trainer: Trainer, info: Progress, report: ProgressCallback, last: bool) -> None:
    config, step = trainer.config, info.step
    if config.checkpoint_every and (step % config.checkpoint_every == 0 or last):
        path = save_checkpoint(trainer)
        report(dataclasses.replace(info, event="checkpoint", path=str(path)))
    if config.validate_every and (step % config.validate_every == 0 or last):
        path = trainer.validate()
        report(dataclasses.replace(info, event="validation", path=str(path)))


def _final_progress(trainer: Trainer, clock: _Clock, event: str) -> Progress:
    step = trainer.state.step
    return Progress(
        step=step,
        total_steps=clock.total_steps,
        loss=math.nan,
        lr=trainer.lr_at(max(0, step - 1)),
        elapsed_s=time.perf_counter() - clock.started,
        steps_per_s=0.0,
        eta_s=0.0,
        event=event,
        path=str(trainer.out / CONCEPT_FILE),
    )


@contextlib.contextmanager
def _gradient_checkpointing(unet: Any, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


def _ignore(_: Progress) -> None:
    pass


def _never() -> bool:
    return False
