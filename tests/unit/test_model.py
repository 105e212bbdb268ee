"""Loading base models: the bundle, its identity, and one clear error per broken folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from textinv.errors import ModelLoadError
from textinv.model import load_base_model, model_hash
from textinv.testing import build_tiny_model


def test_bundle_is_frozen_and_typed(tiny_model) -> None:
    assert tiny_model.text_width == 32
    assert tiny_model.vae_scale_factor == 2  # the tiny VAE has two blocks
    assert tiny_model.prediction_type == "epsilon"
    assert tiny_model.token_embedding.shape == (len(tiny_model.tokenizer), 32)
    for module in (tiny_model.text_encoder, tiny_model.unet, tiny_model.vae):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_hash_is_stable_and_sensitive_to_weights(tmp_path: Path, tiny_model) -> None:
    first = build_tiny_model(tmp_path / "a", seed=0)
    second = build_tiny_model(tmp_path / "b", seed=0)
    other = build_tiny_model(tmp_path / "c", seed=1)
    assert model_hash(first) == model_hash(second)
    assert model_hash(first) != model_hash(other)
    assert len(tiny_model.model_hash) == 64


def test_same_seed_builds_the_same_weights(tmp_path: Path) -> None:
    a = load_base_model(build_tiny_model(tmp_path / "a", seed=3))
    b = load_base_model(build_tiny_model(tmp_path / "b", seed=3))
    for pa, pb in zip(a.unet.parameters(), b.unet.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(tmp_path / "nowhere")


def test_incomplete_folder_names_what_is_missing(tmp_path: Path, tiny_model_dir: Path) -> None:
    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    (broken / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as error:
        load_base_model(broken)
    message = str(error.value)
    assert str(broken) in message
    assert "unet/config.json" in message and "tokenizer" in message


def test_unsupported_kind_is_named(tmp_path: Path, tiny_model_dir: Path) -> None:
    other = shutil.copytree(tiny_model_dir, tmp_path / "sd3")
    index = json.loads((other / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusion3Pipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="StableDiffusion3Pipeline"):
        load_base_model(other)
    # An SDXL index over an SD 1.x folder: the second encoder is named as missing.
    index["_class_name"] = "StableDiffusionXLPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="missing tokenizer_2/, text_encoder_2/ weights"):
        load_base_model(other)
