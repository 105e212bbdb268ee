"""The model families people use, by their component configs: SD 1.5, SD 2.1 (768 px,
v-prediction; and its 512 px epsilon base) and SDXL base 1.0.

One home for these numbers: the configs shipped for single-file checkpoints
(``write_config_folder``, which ``textinv.single_file`` uses when no ``--config DIR`` is given)
and the ``sd15-shape`` / ``sdxl-shape`` benchmark models (``textinv.testing``) both read them.
Each matches the model's published diffusers configs; the parameter counts are checked in the
tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textinv.clip_vocab import EOS, FULL_VOCAB_SIZE, MAX_LENGTH, write_full_clip_tokenizer

BOS_ID, EOS_ID = FULL_VOCAB_SIZE - 2, FULL_VOCAB_SIZE - 1


def clip_text(width: int, layers: int, heads: int, act: str, projection: int) -> dict[str, Any]:
    """A ``CLIPTextConfig``'s values: CLIP ViT-L (768), OpenCLIP ViT-H (1024) or bigG (1280)."""
    return {
        "vocab_size": FULL_VOCAB_SIZE,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": act,
        "projection_dim": projection,
        "layer_norm_eps": 1e-5,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
    }


CLIP_L = clip_text(768, 12, 12, "quick_gelu", 768)
# SD 2.x keeps 23 of OpenCLIP ViT-H's 24 layers (it conditions on the penultimate one).
OPENCLIP_H = clip_text(1024, 23, 16, "gelu", 512)
OPENCLIP_BIGG = clip_text(1280, 32, 20, "gelu", 1280)

UNET_SD1: dict[str, Any] = {  # SD 1.x's UNet: UNet2DConditionModel's defaults, 64 × 64 latents
    "sample_size": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
UNET_SD2: dict[str, Any] = {
    **UNET_SD1,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
}
UNET_SDXL: dict[str, Any] = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids × 256 + the pooled 1280
}
VAE_SD: dict[str, Any] = {
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
VAE_SDXL = {**VAE_SD, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

SCALED_LINEAR: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
SCHEDULER_SD: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    **SCALED_LINEAR,
    "clip_sample": False,  # as SD 1.5's own config: DDIM must not clip its x0 estimate
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
}
SCHEDULER_SD2_V = {
    **SCHEDULER_SD,
    "_class_name": "DDIMScheduler",
    "prediction_type": "v_prediction",
}
SCHEDULER_SDXL: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    **SCALED_LINEAR,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class Family:
    """One architecture: its components' configs and its tokenizers' padding."""

    pipeline: str  # model_index.json's _class_name
    text_encoders: tuple[tuple[str, dict[str, Any]], ...]  # (transformers class, config values)
    pads: tuple[str, ...]  # each tokenizer's pad token: EOS, or "!" (id 0) for OpenCLIP's
    unet: dict[str, Any]
    vae: dict[str, Any]
    scheduler: dict[str, Any]
    extra_index: dict[str, Any] = field(default_factory=dict)


SD15 = Family(
    "StableDiffusionPipeline", (("CLIPTextModel", CLIP_L),), (EOS,), UNET_SD1, VAE_SD, SCHEDULER_SD
)
_SD2_TEXT = (("CLIPTextModel", {**OPENCLIP_H, "pad_token_id": 0}),)
SD21 = Family(
    "StableDiffusionPipeline",
    _SD2_TEXT,
    ("!",),
    {**UNET_SD2, "sample_size": 96, "upcast_attention": True},  # 768 px; fp16 attention overflows
    {**VAE_SD, "sample_size": 768},
    SCHEDULER_SD2_V,
)
SD21_BASE = Family("StableDiffusionPipeline", _SD2_TEXT, ("!",), UNET_SD2, VAE_SD, SCHEDULER_SD)
SDXL_BASE = Family(
    "StableDiffusionXLPipeline",
    (("CLIPTextModel", CLIP_L), ("CLIPTextModelWithProjection", OPENCLIP_BIGG)),
    (EOS, "!"),
    UNET_SDXL,
    VAE_SDXL,
    SCHEDULER_SDXL,
    {"force_zeros_for_empty_prompt": True},
)
FAMILIES = {"sd15": SD15, "sd21": SD21, "sd21-base": SD21_BASE, "sdxl-base": SDXL_BASE}


def write_config_folder(family: Family, folder: Path) -> None:
    """``family``'s diffusers-layout folder without weights: model_index.json, the tokenizers,
    and each component's config (what ``from_single_file(config=...)`` reads)."""
    suffixes = ["", "_2"][: len(family.text_encoders)]
    index: dict[str, Any] = {"_class_name": family.pipeline, **family.extra_index}
    for suffix, (cls, values), pad in zip(suffixes, family.text_encoders, family.pads, strict=True):
        text_config = {"architectures": [cls], "model_type": "clip_text_model", **values}
        _write_json(folder / f"text_encoder{suffix}" / "config.json", text_config)
        write_full_clip_tokenizer(folder / f"tokenizer{suffix}", pad_token=pad)
        index[f"text_encoder{suffix}"] = ["transformers", cls]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    for name, cls, values in (
        ("unet", "UNet2DConditionModel", family.unet),
        ("vae", "AutoencoderKL", family.vae),
    ):
        _write_json(folder / name / "config.json", {"_class_name": cls, **values})
        index[name] = ["diffusers", cls]
    _write_json(folder / "scheduler" / "scheduler_config.json", family.scheduler)
    index["scheduler"] = ["diffusers", family.scheduler["_class_name"]]
    if family.pipeline == "StableDiffusionPipeline":
        index |= {"safety_checker": [None, None], "feature_extractor": [None, None]}
        index["requires_safety_checker"] = False
    _write_json(folder / "model_index.json", index)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
