"""The configs shipped for single-file checkpoints of the common families: the published sizes,
CLIP's own tokenizer, and a folder that diffusers' ``from_single_file`` converts with."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tests.unit.original_layout import write_original_checkpoint
from textinv.errors import ModelLoadError
from textinv.families import FAMILIES, SD15, write_config_folder
from textinv.model import load_base_model
from textinv.single_file import CACHE_ENV, MODEL_CONFIG_ENV, config_folder, single_file_folder

# Each family's parameter counts (UNet, VAE, each text encoder without its projection), as the
# published diffusers models have them.
PUBLISHED = {
    "sd15": (859_520_964, 83_653_863, [123_060_480]),
    "sd21": (865_910_724, 83_653_863, [340_387_840]),
    "sd21-base": (865_910_724, 83_653_863, [340_387_840]),
    "sdxl-base": (2_567_463_684, 83_653_863, [123_060_480, 693_021_440]),
}


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_shipped_folder_builds_the_published_model(name: str, tmp_path: Path) -> None:
    folder = tmp_path / name
    write_config_folder(FAMILIES[name], folder)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        texts = [
            CLIPTextModel(CLIPTextConfig.from_pretrained(path.parent))
            for path in sorted(folder.glob("text_encoder*/config.json"))
        ]
    assert (parameters(unet), parameters(vae), [parameters(t) for t in texts]) == PUBLISHED[name]
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"][1] == FAMILIES[name].scheduler["_class_name"]
    assert config_folder(folder, folder, "sdxl-base" if len(texts) == 2 else "sd15") == folder


def test_the_shipped_tokenizers_are_clips(tmp_path: Path) -> None:
    """Token ids as ``openai/clip-vit-large-patch14`` gives them; SD 2.x's and SDXL's second
    tokenizer pad with "!" (id 0)."""
    write_config_folder(FAMILIES["sdxl-base"], tmp_path)
    first = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    second = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer_2")
    assert len(first) == 49408
    for tokenizer in (first, second):
        assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tokenizer("A dog, oil painting").input_ids[1:-1] == [320, 1929, 267, 2870, 3086]
    assert (first.pad_token_id, second.pad_token_id) == (49407, 0)


def test_a_file_without_config_gets_its_familys(tmp_path: Path, monkeypatch) -> None:
    """The layout names the family: SD 1.x's, SD 2.x's (read as SD 2.1 at 768 px) and SDXL's
    text encoder keys; a shipped name in ``--config`` picks another."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(MODEL_CONFIG_ENV, raising=False)
    parts = {"model.diffusion_model.x": torch.zeros(1), "first_stage_model.x": torch.zeros(1)}
    for name, text_keys in (
        ("sd15", ["cond_stage_model.transformer.x"]),
        ("sd21", ["cond_stage_model.model.x"]),
        ("sdxl-base", ["conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x"]),
    ):
        path = tmp_path / f"{name}.safetensors"
        save_file({**parts, **{key: torch.zeros(1) for key in text_keys}}, str(path))
        with pytest.raises(ModelLoadError, match=f"cannot be converted with {name}-"):
            single_file_folder(path)
    chosen = config_folder(Path("sd21-base"), path)
    assert chosen.name.startswith("sd21-base-") and chosen.parent == tmp_path / "cache" / "configs"
    scheduler = json.loads((chosen / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"


def test_a_written_folder_converts_a_file_to_the_same_weights(
    tiny_model, tmp_path: Path, monkeypatch
) -> None:
    """``write_config_folder`` with the tiny model's component configs: what from_single_file
    reads from it is the tiny model, weight for weight."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    tiny = replace(
        SD15,
        text_encoders=(("CLIPTextModel", tiny_model.text_encoder.config.to_dict()),),
        unet=public(tiny_model.unet.config),
        vae=public(tiny_model.vae.config),
    )
    write_config_folder(tiny, tmp_path / "config")
    checkpoint = write_original_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    monkeypatch.setenv(MODEL_CONFIG_ENV, str(tmp_path / "config"))
    loaded = load_base_model(checkpoint)
    for name in ("text_encoder", "unet", "vae"):
        ours, theirs = getattr(tiny_model, name).state_dict(), getattr(loaded, name).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert len(loaded.tokenizer) == 49408  # the shipped CLIP tokenizer, not the tiny one


def public(config: object) -> dict[str, object]:
    """A diffusers config without its bookkeeping (``_class_name``, ``_diffusers_version``)."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}  # type: ignore[call-overload]
