"""Cross Initialization (``--init-method cross``): the vectors start at the frozen text encoder's
output for the init word, and its regularizer pulls them back toward it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.unit.test_trainer import config_for, make_images
from textinv.errors import InvalidInputError
from textinv.trainer import prepare
from textinv.trainer.config import InitMethod
from textinv.trainer.prepare import initializer_ids


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("images"))


def transformers_final_states(text_encoder, tokenizer, init: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The reference: transformers' own forward over ``<bos> init <eos>``, unpadded, as
    Cross Initialization's code runs it; the states at the init tokens [M, D]."""
    ids = tokenizer(init, padding="do_not_pad", return_tensors="pt").input_ids  # [1, M + 2]
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state[0, 1:-1].float()


def test_the_vectors_start_at_the_text_encoders_output(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    init = "toy"
    cross = prepare(
        config_for(image_dir, tmp_path / "a", tiny_model_dir, init=init, init_method="cross"),
        tiny_model,
    )
    expected = transformers_final_states(tiny_model.text_encoder, tiny_model.tokenizer, init)
    assert cross.config.init_method is InitMethod.CROSS
    assert torch.allclose(cross.init_vectors[0], expected, atol=1e-6)
    assert torch.equal(cross.vectors.detach(), cross.init_vectors[0])
    # Control: the paper's start (the token table's row) is elsewhere.
    token = prepare(config_for(image_dir, tmp_path / "b", tiny_model_dir, init=init), tiny_model)
    assert (token.init_vectors[0] - expected).abs().max() > 1e-2


def test_k_vectors_spread_the_init_tokens_states(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    ids = initializer_ids(tiny_model.tokenizer, "red toy")
    assert len(ids) == 2
    config = config_for(
        image_dir, tmp_path / "out", tiny_model_dir, init="red toy", init_method="cross", vectors=4
    )
    trainer = prepare(config, tiny_model)
    states = transformers_final_states(tiny_model.text_encoder, tiny_model.tokenizer, "red toy")
    # K = 4 > M = 2: vector i copies token floor(i·M/K), as the token initializer does.
    expected = states[[0, 0, 1, 1]]
    assert torch.allclose(trainer.init_vectors[0], expected, atol=1e-6)
    assert (states[0] - states[1]).abs().max() > 1e-3  # the two tokens' states differ


def test_the_regularizer_is_lambda_times_the_mean_distance(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    config = config_for(
        image_dir, tmp_path / "out", tiny_model_dir, init_method="cross", cross_reg_weight=0.5
    )
    trainer = prepare(config, tiny_model)
    start = trainer.init_vectors[0]
    moved = start + torch.tensor([3.0, 4.0] + [0.0] * (start.shape[1] - 2))  # distance 5
    assert trainer.regularized
    value = float(trainer.regularization((moved,)))
    assert value == pytest.approx(0.5 * F.pairwise_distance(moved, start).mean().item())
    assert value == pytest.approx(2.5, rel=1e-4)
    # At the start the distance is zero and the gradient stays finite (pairwise_distance's ε).
    vectors = start.clone().requires_grad_(True)
    trainer.regularization((vectors,)).backward()
    assert vectors.grad is not None and torch.isfinite(vectors.grad).all()
    # Without cross init the weight does nothing; the squared pull is embedding_reg_weight's.
    token = prepare(config_for(image_dir, tmp_path / "t", tiny_model_dir), tiny_model)
    assert not token.regularized


def test_a_cross_initialized_run_trains(tiny_model, tiny_model_dir, image_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, init_method="cross", steps=3)
    trainer = prepare(config, tiny_model)
    start = trainer.vectors.detach().clone()
    losses: list[float] = []
    concept = trainer.train(progress=lambda p: losses.append(p.loss) if p.event == "step" else None)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert (concept.vectors - start).abs().max() > 1e-6


def test_sdxl_starts_each_set_at_its_own_encoder(  # type: ignore[no-untyped-def]
    tiny_sdxl_model_dir, image_dir, tmp_path
) -> None:
    from textinv.model import load_base_model

    model = load_base_model(tiny_sdxl_model_dir)
    config = config_for(
        image_dir, tmp_path / "out", tiny_sdxl_model_dir, init_method="cross", resolution=64
    )
    trainer = prepare(config, model)
    first = transformers_final_states(model.text_encoder, model.tokenizer, "toy")
    second = transformers_final_states(model.text_encoder_2, model.tokenizer_2, "toy")
    assert torch.allclose(trainer.init_vectors[0], first, atol=1e-6)
    assert torch.allclose(trainer.init_vectors[1], second, atol=1e-6)


def test_an_init_text_too_long_for_one_pass_is_refused(  # type: ignore[no-untyped-def]
    tiny_model, tiny_model_dir, image_dir, tmp_path
) -> None:
    init = " ".join(["toy"] * 200)
    config = config_for(image_dir, tmp_path / "out", tiny_model_dir, init=init, init_method="cross")
    with pytest.raises(InvalidInputError, match="--init: with --init-method cross"):
        prepare(config, tiny_model)
