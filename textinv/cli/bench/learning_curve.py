"""A learned word's fidelity along its training run, for ``bench time-to-concept`` and the demo.

Training keeps a copy of the learned vectors at chosen steps (``Snapshot``: [K, D], a few KiB)
with the training time so far; the snapshots are read after the run (``read_curve``), so reading
costs the run no time and the clock needs no correcting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from textinv.cli.bench.fidelity import FidelityReader
from textinv.toy import world
from textinv.toy.evaluation.time_to_concept import Reading
from textinv.trainer import InvertConfig

FIRST_READ = 25  # steps; then every doubling, and the last step


@dataclass(frozen=True)
class Snapshot:
    """The learned vectors after ``step`` optimizer steps and ``seconds`` of training."""

    step: int
    seconds: float  # from the start of ``prepare`` (the latent cache is part of the time)
    vectors: torch.Tensor  # [K, D]


def read_steps(total: int, first: int = FIRST_READ) -> frozenset[int]:
    """``first``, twice that, … below ``total``, and ``total``."""
    steps, step = {total}, first
    while step < total:
        steps.add(step)
        step *= 2
    return frozenset(steps)


def train_with_snapshots(
    config: InvertConfig,
    model: Any,
    steps: Iterable[int],
    progress: Callable[[Any], None] | None = None,
) -> list[Snapshot]:
    """Run ``config`` on the loaded ``model`` (writing its concept file, as ``invert`` does),
    keeping a snapshot at each of ``steps`` (and where DVAR stops it early); ``progress`` sees
    every event, as ``invert``'s does."""
    from textinv.trainer import prepare

    wanted, snapshots = frozenset(steps), list[Snapshot]()
    started = time.perf_counter()
    trainer = prepare(config, model)
    setup_s = time.perf_counter() - started

    def on_progress(event: Any) -> None:
        if progress is not None:
            progress(event)
        # Each wanted step, and the step an early stop (DVAR) ended the run at.
        ended = event.event == "early_stop" and (not snapshots or snapshots[-1].step < event.step)
        if (event.event == "step" and event.step in wanted) or ended:
            vectors = trainer.concept().vectors.detach().clone()
            snapshots.append(Snapshot(event.step, setup_s + event.elapsed_s, vectors))

    trainer.train(progress=on_progress)
    return snapshots


def read_curve(
    reader: FidelityReader,
    token: str,
    target: world.HeldOutConcept,
    snapshots: Iterable[Snapshot],
    say: Callable[[str], None] | None = None,
) -> tuple[Reading, ...]:
    """Each snapshot's fidelity to ``target``, with ``token`` standing for its vectors."""
    readings = []
    for snapshot in snapshots:
        fidelity = reader.read(token, target, {token: snapshot.vectors})
        readings.append(Reading(snapshot.step, snapshot.seconds, fidelity))
        if say is not None:
            say(f"  step {snapshot.step} ({snapshot.seconds:.1f} s): {fidelity.reconstruction}")
    return tuple(readings)
