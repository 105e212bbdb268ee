"""A tiny seeded SDXL model in the diffusers layout, built in code (the sizes of diffusers' own
SDXL tests): two CLIP tokenizers (the second pads with "!", as SDXL's does), a ``CLIPTextModel``
and a ``CLIPTextModelWithProjection`` of different widths, a UNet with SDXL's added conditioning
(``text_embeds`` and ``time_ids``) and an Euler scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from textinv.testing import (
    SD2_UNET,
    fit_text_encoder_to_tokenizer,
    tiny_text_config,
    tiny_unet,
    tiny_vae,
    write_clip_tokenizer,
)

# The two text widths: clip_l and clip_g of a concept (768 and 1280 at full size).
TINY_SDXL_WIDTHS = (32, 48)
TIME_EMBED_DIM = 8  # per time id; SDXL has 6 time ids


def build_tiny_sdxl_model(folder: Path, seed: int = 0) -> Path:
    """Write a tiny seeded SDXL base model to ``folder`` in the diffusers layout; return it."""
    from diffusers import StableDiffusionXLPipeline

    folder = Path(folder)
    width_l, width_g = TINY_SDXL_WIDTHS
    tokenizers = _tokenizers(folder)
    # Both of SDXL's text encoders use GELU; the second projects its pooled state.
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_config(width_l, hidden_act="gelu"))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_text_config(width_g, hidden_act="gelu", projection_dim=width_g)
    )
    fit_text_encoder_to_tokenizer(text_encoder, tokenizers[0])
    fit_text_encoder_to_tokenizer(text_encoder_2, tokenizers[1])
    unet = _unet(width_l, width_g, seed)
    torch.manual_seed(seed)
    # SDXL's latent scaling; its VAE overflows in fp16, so diffusers upcasts it.
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0],
        tokenizer_2=tokenizers[1],
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )
    pipeline.save_pretrained(folder)
    for name in ("_tok", "_tok2"):
        for leftover in (folder / name).iterdir():
            leftover.unlink()
        (folder / name).rmdir()
    return folder


def _tokenizers(folder: Path) -> list[CLIPTokenizer]:
    """SD's tokenizer, twice; the second pads with "!" (id 0 in CLIP's vocabulary), as SDXL's."""
    tokenizers = []
    for name, pad in (("_tok", None), ("_tok2", "!")):
        write_clip_tokenizer(folder / name)
        if pad is not None:  # SDXL's second tokenizer pads with "!" (id 0 in CLIP's vocabulary)
            for file in ("tokenizer_config.json", "special_tokens_map.json"):
                path = folder / name / file
                path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token": pad}))
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / name))
    return tokenizers


def _unet(width_l: int, width_g: int, seed: int) -> UNet2DConditionModel:
    """SDXL's UNet at diffusers' test size: cross-attention over both widths, text_time
    conditioning on the pooled embedding and six time ids."""
    torch.manual_seed(seed)
    return tiny_unet(
        width_l + width_g,
        **SD2_UNET,  # per-block heads and linear projections, as SD 2.x and SDXL have
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + width_g,
    )
