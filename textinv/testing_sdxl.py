"""A tiny seeded SDXL model in the diffusers layout, built in code (the sizes of diffusers' own
SDXL tests): two CLIP tokenizers (the second pads with "!", as SDXL's does), a ``CLIPTextModel``
and a ``CLIPTextModelWithProjection`` of different widths, a UNet with SDXL's added conditioning
(``text_embeds`` and ``time_ids``) and an Euler scheduler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from textinv.clip_vocab import EOS
from textinv.families import SDXL_BASE
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
    for name, pad in (("_tok", EOS), ("_tok2", "!")):
        write_clip_tokenizer(folder / name, pad_token=pad)
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


SDXL_SHAPE = "sdxl-shape"


def sdxl_shape_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    """SDXL base 1.0's exact component configs (``textinv.families.SDXL_BASE``) with seeded
    random weights: CLIP ViT-L's and OpenCLIP bigG's text encoders (768 and 1280 wide, 12 and 32
    layers, 49408-row tables), the 2.6B-parameter UNet (transformer depths 1, 2, 10; text_time
    conditioning) and the VAE. About 3.5B parameters: 14 GB in fp32, 7 GB in bf16. Build it on
    the ``meta`` device to read its sizes for nothing."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig

    (_, clip_l), (_, clip_g) = SDXL_BASE.text_encoders
    torch.manual_seed(seed)
    return {
        "text_encoder": CLIPTextModel(CLIPTextConfig(**clip_l)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**clip_g)),
        "unet": UNet2DConditionModel(**SDXL_BASE.unet),
        "vae": AutoencoderKL(**SDXL_BASE.vae),
    }


def sdxl_shape_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:  # -> BaseModel
    """An in-memory ``BaseModel`` with SDXL base's shapes (``sdxl_shape_components``), as
    ``textinv.testing.sd15_shape_model`` is SD 1.5's: CLIP's own tokenizers (the second pads with
    "!"), so the pooled ``text_embeds`` come from the end-of-text position the configs name, in
    diffusers as in ours. Its identity is ``sdxl-shape-seed{seed}``."""
    from textinv.model import BaseModel
    from textinv.testing import full_clip_tokenizer

    tokenizer, tokenizer_2 = full_clip_tokenizer(), full_clip_tokenizer(pad_token="!")
    components = sdxl_shape_components(seed)
    for module in components.values():
        module.requires_grad_(False)
        module.eval()
        if dtype != torch.float32:
            module.to(dtype)
    return BaseModel(
        path=Path(SDXL_SHAPE),
        tokenizer=tokenizer,
        text_encoder=components["text_encoder"],
        unet=components["unet"],
        vae=components["vae"],
        scheduler_config=dict(SDXL_BASE.scheduler),
        model_hash=f"{SDXL_SHAPE}-seed{seed}",
        tokenizer_2=tokenizer_2,
        text_encoder_2=components["text_encoder_2"],
        force_zeros_for_empty_prompt=True,
    )
