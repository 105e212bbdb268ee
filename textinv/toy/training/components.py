"""The embedded model's architecture: Stable Diffusion's components at toy size.

A CLIP-style tokenizer over the world's words and ``CLIPTextModel``, a ``UNet2DConditionModel``
and an ``AutoencoderKL`` with a 4× downsampling (32×32 px images ↔ 4×8×8 latents), and SD 1.x's
noise schedule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from textinv.testing import MAX_LENGTH, write_clip_tokenizer
from textinv.toy import world
from textinv.toy.training.config import ToyTrainConfig

# SD 1.x's noise schedule; training uses DDPM, the saved model PNDM as SD 1.x ships.
SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """``write_clip_tokenizer`` over the world's words, then made to keep every word whole."""
    words = world.vocabulary()
    write_clip_tokenizer(folder, words)
    words = [w for w in words if w.isalpha()]  # CLIP splits "close-up" at the hyphen anyway
    for word in words:
        _make_whole(folder, word)
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    split = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
    if split:
        raise RuntimeError(f"the toy tokenizer splits {split}")
    return tokenizer


def _make_whole(folder: Path, word: str) -> None:
    """Append merges that join ``word``'s BPE pieces left to right.

    Each word's merge chain alone makes it one token, but another word's earlier merge can fire
    first inside it ("r i" from "right" splits "striped" into st·ri·p·e·d). Merges appended last
    only join what no earlier merge touches, so words already whole stay whole.
    """
    pieces = CLIPTokenizer.from_pretrained(folder).tokenize(word)
    if len(pieces) < 2:
        return
    vocab = json.loads((folder / "vocab.json").read_text())
    merges = (folder / "merges.txt").read_text().rstrip("\n").split("\n")
    special = [token for token in vocab if token.startswith("<|")]
    for token in special:
        del vocab[token]
    merged = pieces[0]
    for piece in pieces[1:]:
        merges.append(f"{merged} {piece}")
        merged += piece
        vocab.setdefault(merged, len(vocab))
    for token in special:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("\n".join(merges) + "\n")


def build_vae(channels: tuple[int, ...] = ToyTrainConfig.vae_channels) -> AutoencoderKL:
    """32×32×3 ↔ 8×8×4: three levels, two downsamplings."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        block_out_channels=list(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.RESOLUTION,
    )


def build_text_encoder(tokenizer: CLIPTokenizer, width: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=width * 4,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_unet(width: int, channels: tuple[int, ...], layers: int) -> UNet2DConditionModel:
    """8×8 latents → 4×4 → 2×2; cross-attention at the two finer levels."""
    return UNet2DConditionModel(
        sample_size=world.RESOLUTION // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=channels,
        layers_per_block=layers,
        cross_attention_dim=width,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def inference_scheduler() -> PNDMScheduler:
    """SD 1.x's inference scheduler. Like SD 1.5's config it records ``clip_sample: false``:
    DDIM built from this config must not clip x0 to [-1, 1], which this VAE's latents exceed."""
    scheduler = PNDMScheduler(
        **SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False
    )
    scheduler.register_to_config(clip_sample=False)
    return scheduler
