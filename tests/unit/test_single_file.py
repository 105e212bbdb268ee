"""Single-file checkpoints: a tiny model written in the original (Automatic1111/Civitai) layout
loads, offline, to the same weights and the same image as its diffusers folder; converted once;
bad files refused with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.unit.generation_reference import pixels
from tests.unit.original_layout import config_folder_of, write_original_checkpoint
from textinv.cli import main
from textinv.errors import ModelLoadError
from textinv.model import load_base_model
from textinv.single_file import CACHE_ENV, MODEL_CONFIG_ENV
from textinv_server.pipeline.generation import load_generation_pipeline
from textinv_server.requests import GenerationRequest


@pytest.fixture()
def config(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = config_folder_of(tiny_model_dir, tmp_path / "config")
    monkeypatch.setenv(MODEL_CONFIG_ENV, str(folder))
    return folder


@pytest.fixture()
def checkpoint(tiny_model, tmp_path: Path) -> Path:
    return write_original_checkpoint(tiny_model, tmp_path / "model.safetensors")


def test_a_single_file_loads_the_same_weights_and_image(tiny_model, checkpoint, config) -> None:
    loaded = load_base_model(checkpoint)
    for name in ("text_encoder", "unet", "vae"):
        ours, theirs = getattr(tiny_model, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    request = GenerationRequest(prompt="a red cat", steps=3, seed=4, width=32, height=32)
    from_file = pixels(load_generation_pipeline(checkpoint)(request))
    from_folder = pixels(load_generation_pipeline(tiny_model)(request))
    assert np.array_equal(from_file, from_folder)


def test_an_sd2_single_file_loads_the_same_weights_and_image(
    tiny_sd2_model, tiny_sd2_model_dir, tmp_path, monkeypatch
) -> None:
    """SD 2.x's text encoder is stored in OpenCLIP's layout (q, k, v stacked), and v-prediction
    comes from the config folder."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(MODEL_CONFIG_ENV, str(config_folder_of(tiny_sd2_model_dir, tmp_path / "c")))
    checkpoint = write_original_checkpoint(tiny_sd2_model, tmp_path / "sd2.safetensors")
    loaded = load_base_model(checkpoint)
    assert (loaded.family, loaded.prediction_type) == ("sd2", "v_prediction")
    for name in ("text_encoder", "unet", "vae"):
        ours, theirs = (
            getattr(tiny_sd2_model, name).state_dict(),
            getattr(loaded, name).state_dict(),
        )
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    request = GenerationRequest(prompt="a red cat", steps=3, seed=4, width=32, height=32)
    from_file = pixels(load_generation_pipeline(checkpoint)(request))
    assert np.array_equal(from_file, pixels(load_generation_pipeline(tiny_sd2_model)(request)))


def test_an_sdxl_single_file_loads_the_same_weights_and_image(
    tiny_sdxl_model_dir, tmp_path, monkeypatch
) -> None:
    """SDXL's file (SGM's layout): CLIP ViT-L under conditioner.embedders.0, OpenCLIP under .1
    with its text_projection, the UNet's label_emb (text_time conditioning)."""
    from tests.unit.sdxl_reference import registered, sdxl_concepts

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    config = config_folder_of(tiny_sdxl_model_dir, tmp_path / "c")
    monkeypatch.setenv(MODEL_CONFIG_ENV, str(config))
    folder_model = load_base_model(tiny_sdxl_model_dir)
    checkpoint = write_original_checkpoint(folder_model, tmp_path / "sdxl.safetensors")
    loaded = load_base_model(checkpoint)
    assert loaded.is_sdxl and loaded.force_zeros_for_empty_prompt
    for name in ("text_encoder", "text_encoder_2", "unet", "vae"):
        ours, theirs = (
            getattr(folder_model, name).state_dict(),
            getattr(loaded, name).state_dict(),
        )
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    request = GenerationRequest(prompt="a <cat-toy>", steps=3, seed=4, width=32, height=32)
    concepts = registered(sdxl_concepts(7))
    from_file = pixels(load_generation_pipeline(checkpoint)(request, concepts))
    assert np.array_equal(
        from_file, pixels(load_generation_pipeline(folder_model)(request, concepts))
    )
    # Its config folder needs the second text encoder's config and tokenizer too.
    (config / "text_encoder_2" / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="lacks text_encoder_2/config.json"):
        load_base_model(checkpoint)


def test_it_is_converted_once_and_its_hash_follows_the_file(checkpoint, config, monkeypatch):
    first = load_base_model(checkpoint)

    def no_second_conversion(*_: object) -> None:
        raise AssertionError("converted again")

    with monkeypatch.context() as patched:
        patched.setattr("textinv.single_file.convert", no_second_conversion)
        assert load_base_model(checkpoint).model_hash == first.model_hash
    # Another file, one bias apart, is another model.
    weights = load_file(str(checkpoint))
    weights["model.diffusion_model.out.2.bias"] += 1
    other = checkpoint.with_name("other.safetensors")
    save_file(weights, str(other))
    assert load_base_model(other).model_hash != first.model_hash
    other.write_bytes(b"")  # and an emptied file is refused, not served from a cache
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_base_model(other)


def test_the_command_line_takes_a_single_file_with_config(
    checkpoint, config, tmp_path, monkeypatch
):
    monkeypatch.delenv(MODEL_CONFIG_ENV)
    monkeypatch.setenv(MODEL_CONFIG_ENV, "")  # restored after the test; main sets it from --config
    out = tmp_path / "x.png"
    argv = ["generate", "--model", str(checkpoint), "--config", str(config), "--prompt", "a cat"]
    assert main([*argv, "--steps", "2", "--width", "32", "--height", "32", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_bad_single_files_are_refused_with_the_reason(checkpoint, config, tmp_path, monkeypatch):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not opened")
    with pytest.raises(ModelLoadError, match="model.ckpt: .ckpt checkpoints are Python pickles"):
        load_base_model(pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="garbage.safetensors: not a readable safetensors"):
        load_base_model(garbage)
    unet_only = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(unet_only))
    with pytest.raises(ModelLoadError, match="no VAE, text encoder weights"):
        load_base_model(unet_only)
    sdxl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.transformer.x": torch.zeros(1)}, str(sdxl))
    with pytest.raises(
        ModelLoadError, match="not an SDXL checkpoint .* no UNet, VAE, text encoder 2"
    ):
        load_base_model(sdxl)
    # Without --config, SD 1.5's shipped configs, whose shapes the tiny file does not have.
    monkeypatch.delenv(MODEL_CONFIG_ENV)
    with pytest.raises(ModelLoadError, match="model.safetensors: cannot be converted with sd15-"):
        load_base_model(checkpoint)
    (config / "unet" / "config.json").unlink()
    monkeypatch.setenv(MODEL_CONFIG_ENV, str(config))
    with pytest.raises(ModelLoadError, match="lacks unet/config.json"):
        load_base_model(checkpoint)
