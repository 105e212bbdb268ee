"""A stop request lands within one micro-batch, and drops the interrupted optimizer step whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from tests.unit.test_trainer import config_for, make_images
from textinv.trainer import invert, iter_log, prepare


def test_a_stop_between_micro_batches_drops_the_step_whole(
    tiny_model: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    images = make_images(tmp_path / "images")
    common = {"steps": 4, "grad_accum": 3, "checkpoint_every": 3, "lr_schedule": "cosine"}
    whole = invert(config_for(images, tmp_path / "a", tiny_model_dir, **common), model=tiny_model)

    # Two whole steps (6 micro-batches), then a stop asked for during step 3's first one.
    config = config_for(images, tmp_path / "b", tiny_model_dir, **common)
    trainer = prepare(config, tiny_model)
    backwards: list[int] = []
    loss = trainer.loss

    def counted_loss(vectors: Any, batch: Any, *, weighted: bool = True) -> torch.Tensor:
        if torch.is_grad_enabled():  # a training micro-batch, not an evaluation
            backwards.append(1)
        return loss(vectors, batch, weighted=weighted)

    trainer.loss = counted_loss  # type: ignore[method-assign]
    stopped = trainer.train(should_stop=lambda: len(backwards) >= 7)
    assert len(backwards) == 7  # the stop came one micro-batch into step 3, not at its end
    assert stopped.metadata.steps == 2
    assert (tmp_path / "b" / "checkpoints" / "step-2.pt").exists()  # the last whole step
    assert [r["step"] for r in iter_log(tmp_path / "b")] == [1, 2]

    # Nothing of the dropped step leaked: the resume ends bit-identical to the whole run.
    resumed = invert(dataclasses.replace(config, resume=True), model=tiny_model)
    assert torch.equal(resumed.vectors, whole.vectors)
    assert [r["step"] for r in iter_log(tmp_path / "b")] == [1, 2, 3, 4]
