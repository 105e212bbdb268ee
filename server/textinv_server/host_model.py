"""The host side of a base model: what the pipeline needs besides the backend's compute graphs.

Tokenizer, the token-embedding table (DESIGN decision 1: the server does the lookup), the
scheduler config and a few sizes. An onnxruntime or TensorRT backend needs no torch modules, so
``load_host_model`` reads only these from the model folder: the table straight out of the text
encoder's weights, never the UNet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerBase,
)

from textinv.model import (
    BaseModel,
    check_model_folder,
    forces_zeros_for_empty_prompt,
    model_hash,
    resolve_model_folder,
    text_encoder_family,
)

TABLE_KEY_SUFFIX = "embeddings.token_embedding.weight"


@dataclass(frozen=True)
class HostModel:
    path: Path
    tokenizer: PreTrainedTokenizerBase
    token_embedding: torch.Tensor  # [V, D], float32 on the CPU
    scheduler_config: dict[str, Any]
    latent_channels: int  # 4 for SD 1.x/2.x
    vae_scale_factor: int  # pixels per latent cell (8 for SD; 2 for the tiny test model)
    latent_scaling: float  # VAE latents × this = the UNet's unit-variance space
    default_resolution: int  # pixels; the UNet's native image side
    model_hash: str
    text_encoder_layers: int  # transformer layers; a request may skip all but the first
    family: str = "sd1"  # "sd1", "sd2" or "sdxl" (BaseModel.family)
    # SDXL: the second tokenizer and its table [V, D2], and whether an empty negative is zeros.
    tokenizer_2: PreTrainedTokenizerBase | None = None
    token_embedding_2: torch.Tensor | None = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.token_embedding_2 is not None

    @property
    def text_width(self) -> int:
        return int(self.token_embedding.shape[1])

    @property
    def text_widths(self) -> tuple[int, ...]:
        """Each text encoder's width: (D,), or SDXL's (D1, D2)."""
        second = self.token_embedding_2
        return (self.text_width, *(() if second is None else (int(second.shape[1]),)))

    @classmethod
    def of(cls, model: BaseModel) -> HostModel:
        return cls(
            path=model.path,
            tokenizer=model.tokenizer,
            token_embedding=model.token_embedding.detach().float().cpu(),
            scheduler_config=dict(model.scheduler_config),
            latent_channels=int(model.vae.config.latent_channels),
            vae_scale_factor=model.vae_scale_factor,
            latent_scaling=model.latent_scaling,
            default_resolution=model.default_resolution,
            model_hash=model.model_hash,
            text_encoder_layers=int(model.text_encoder.config.num_hidden_layers),
            family=model.family,
            tokenizer_2=model.tokenizer_2,
            token_embedding_2=(
                None
                if model.text_encoder_2 is None
                else model.text_encoder_2.get_input_embeddings().weight.detach().float().cpu()
            ),
            force_zeros_for_empty_prompt=model.force_zeros_for_empty_prompt,
        )


def load_host_model(name_or_path: str | Path | None) -> HostModel:
    """Read tokenizer, token table, configs and hash of a diffusers folder (no UNet, no VAE)."""
    folder = resolve_model_folder(name_or_path)
    check_model_folder(folder)
    sdxl = (folder / "text_encoder_2").is_dir()
    unet = _read_json(folder / "unet/config.json")
    vae = _read_json(folder / "vae/config.json")
    text_encoder = _read_json(folder / "text_encoder/config.json")
    vae_scale_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return HostModel(
        path=folder,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        token_embedding=_read_token_table(folder / "text_encoder"),
        scheduler_config=_read_json(folder / "scheduler/scheduler_config.json"),
        latent_channels=int(vae.get("latent_channels", 4)),
        vae_scale_factor=vae_scale_factor,
        latent_scaling=float(vae.get("scaling_factor", 0.18215)),
        default_resolution=int(unet["sample_size"]) * vae_scale_factor,
        model_hash=model_hash(folder),
        text_encoder_layers=int(text_encoder["num_hidden_layers"]),
        family="sdxl"
        if sdxl
        else text_encoder_family(text_encoder.get("hidden_act", "quick_gelu")),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2") if sdxl else None,
        token_embedding_2=(
            _read_token_table(folder / "text_encoder_2", CLIPTextModelWithProjection)
            if sdxl
            else None
        ),
        force_zeros_for_empty_prompt=forces_zeros_for_empty_prompt(folder),
    )


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict), f"{path} holds no JSON object"
    return data


def _read_token_table(folder: Path, encoder_class: Any = CLIPTextModel) -> torch.Tensor:
    """The [V, D] table from a safetensors file; any other layout loads the text encoder."""
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key.endswith(TABLE_KEY_SUFFIX):
                    return weights.get_tensor(key).float()
    encoder = encoder_class.from_pretrained(folder)
    return encoder.get_input_embeddings().weight.detach().float()
