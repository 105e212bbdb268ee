"""A run's output folder: its file names, the step log, the resolved config and the checkpoints.

A checkpoint holds tensors and primitives only (``torch.load(weights_only=True)`` reads it back):
the vectors, the optimizer, the loss scaler, the generator, the early-stopping history and the
settings' fingerprint, so a resumed run continues bit-identically on CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textinv.errors import InvalidInputError
from textinv.fileio import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from textinv.trainer.run import Trainer

log = logging.getLogger("textinv.trainer")

CONCEPT_FILE = "learned_embeds.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
VALIDATION_DIR = "validation"
CHECKPOINT_FORMAT = 1
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
# Config fields that may change between a run and its --resume; every other one must match.
_RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "out",
        "resume",
        "overwrite",
        "checkpoint_every",
        "validate_every",
        "validation_prompt",
        "num_validation_images",
        "validation_steps",
        "device",
        "trace",  # how the frozen modules are dispatched, not what they compute
        "model",
        "images",
        "max_images",
    }
)


@dataclass
class TrainState:
    """What a checkpoint holds besides the vectors and the optimizer."""

    step: int = 0
    eval_history: list[float] = field(default_factory=list)
    stopped_early: bool = False


def list_checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out``, oldest step first."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def iter_log(out: str | Path) -> Iterator[dict[str, Any]]:
    """The step log of a run, one dict per line."""
    with open(Path(out) / LOG_FILE, encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def start_run_files(trainer: Trainer) -> None:
    """Clear the folder (``--overwrite``) or resume from its newest checkpoint (``--resume``);
    write the resolved config; keep the log only up to the step the run continues from."""
    config, out = trainer.config, trainer.out
    if config.overwrite:
        for name in (CONCEPT_FILE, LOG_FILE):
            (out / name).unlink(missing_ok=True)
        for folder in (CHECKPOINT_DIR, VALIDATION_DIR):
            shutil.rmtree(out / folder, ignore_errors=True)
    newest = list_checkpoints(out)[-1:] if config.resume else []
    if newest:
        load_checkpoint(trainer, newest[0])
        log.info("resuming from %s (step %d)", newest[0], trainer.state.step)
    elif config.resume:
        log.info("--resume: no checkpoint in %s; starting from step 0", out)
    atomic_write_text(out / CONFIG_FILE, json.dumps(resolved_config(trainer), indent=2) + "\n")
    truncate_log(out / LOG_FILE, trainer.state.step)


def resolved_config(trainer: Trainer) -> dict[str, Any]:
    """The config with every default resolved, as ``config.json`` records it."""
    config = trainer.config
    return {
        **config.to_json(),
        "precision": trainer.precision.value,  # what it ran in ...
        "precision_asked": config.precision.value,  # ... and what was asked ("auto")
        "resolution": trainer.resolution,
        "effective_lr": config.effective_lr,
        "init_token_ids": trainer.init_ids,
        "model_hash": trainer.model.model_hash,
        "prediction_type": trainer.prediction_type,
        "num_images": trainer.cache.num_images,
        "variants_per_image": trainer.cache.num_variants,
        "resumed_from_step": trainer.state.step,
    }


def fingerprint(trainer: Trainer) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues (JSON values only)."""
    data = {k: v for k, v in trainer.config.to_json().items() if k not in _RESUMABLE_CHANGES}
    # The precision the frozen model runs in, not "auto": a resume that would resolve it
    # differently (another machine, another device) is refused rather than drift.
    data["precision"] = trainer.precision.value
    data["model_hash"] = trainer.model.model_hash
    data["num_images"] = trainer.cache.num_images
    return json.loads(json.dumps(data))  # type: ignore[no-any-return]


def checkpoint_state(trainer: Trainer) -> dict[str, Any]:
    """Tensors and primitives only, so ``torch.load(weights_only=True)`` reads it back."""
    config, state = trainer.config, trainer.state
    return {
        "format_version": CHECKPOINT_FORMAT,
        "step": state.step,
        "vectors": trainer.vectors.detach().cpu().clone(),
        # SDXL: the second text encoder's set (an SD 1.x/2.x run has one)
        **{f"vectors_{i + 1}": v.detach().cpu().clone() for i, v in _later_sets(trainer)},
        "optimizer": trainer.optimizer.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "generator": trainer.generator.get_state(),
        "lr_schedule": {
            "name": config.lr_schedule.value,  # a plain str: weights_only loads no Enum
            "base_lr": config.effective_lr,
            "warmup": config.warmup,
            "total_steps": config.steps,
            "last_lr": trainer.lr_at(max(0, state.step - 1)),
        },
        "eval_history": torch.tensor(state.eval_history, dtype=torch.float64),
        "stopped_early": state.stopped_early,
        "fingerprint": fingerprint(trainer),
    }


def save_checkpoint(trainer: Trainer) -> Path:
    path = trainer.out / CHECKPOINT_DIR / f"step-{trainer.state.step}.pt"
    buffer = io.BytesIO()
    torch.save(checkpoint_state(trainer), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    """Restore ``trainer`` from ``path``; refuse a checkpoint made with other settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable, truncated, or not ours
        raise InvalidInputError(f"{str(path)!r}: cannot read the checkpoint ({error})") from error
    _check_fingerprint(path, state.get("fingerprint", {}), fingerprint(trainer))
    with torch.no_grad():
        trainer.vectors.copy_(state["vectors"].to(trainer.device))
        for i, vectors in _later_sets(trainer):
            vectors.copy_(state[f"vectors_{i + 1}"].to(trainer.device))
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scaler.load_state_dict(state["scaler"])
    trainer.generator.set_state(state["generator"])
    trainer.state = TrainState(
        step=int(state["step"]),
        eval_history=[float(x) for x in state["eval_history"].tolist()],
        stopped_early=bool(state["stopped_early"]),
    )


def _check_fingerprint(path: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> None:
    changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if changed:
        details = ", ".join(f"{k}: {theirs.get(k)!r} → {ours.get(k)!r}" for k in changed)
        raise InvalidInputError(
            f"--resume: {str(path)!r} was made with different settings ({details}); "
            "use the same settings, or --overwrite to start over"
        )


def _later_sets(trainer: Trainer) -> list[tuple[int, torch.nn.Parameter]]:
    """``(i, vectors)`` of every set after the first, numbered from 1 (SDXL's clip_g: 1)."""
    return list(enumerate(trainer.vector_sets[1:], start=1))
