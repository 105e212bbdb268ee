"""Small seeded models in the diffusers folder layout, built in code.

No weights can be downloaded on our machines, so tests, benchmarks and the demo build their models
here. ``build_tiny_model`` writes a complete Stable Diffusion 1.x folder (tokenizer, text encoder,
UNet, VAE, scheduler) in about a second; ``build_sd15_shape`` builds, in memory, a model with
Stable Diffusion 1.5's exact component configs and random weights, so that costs are real.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77

# Words the tiny tokenizer knows whole; anything else falls back to characters, as in CLIP's BPE.
TINY_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "an",
    "in",
    "on",
    "with",
    "and",
    "style",
    "painting",
    "picture",
    "rendering",
    "cropped",
    "close-up",
    "dirty",
    "clean",
    "dark",
    "bright",
    "small",
    "large",
    "big",
    "cool",
    "nice",
    "weird",
    "good",
    "one",
    "toy",
    "cat",
    "dog",
    "beach",
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "white",
    "black",
    "pink",
    "brown",
    "gray",
    "star",
    "circle",
    "square",
    "triangle",
    "background",
    "shape",
    "corner",
    "sculpture",
]


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def write_clip_tokenizer(folder: Path, words: Iterable[str] = TINY_WORDS) -> None:
    """Write a CLIP-style BPE tokenizer (vocab.json, merges.txt) that knows ``words`` whole.

    The layout and special tokens are those of SD 1.x's tokenizer; only the vocabulary is small
    (the 512 byte tokens, one merge chain per word, and the two special tokens).
    """
    folder.mkdir(parents=True, exist_ok=True)
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in byte_chars + [c + "</w>" for c in byte_chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        _add_merge_chain(word, vocab, merges)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def _add_merge_chain(word: str, vocab: dict[str, int], merges: list[str]) -> None:
    """Merge ``word``'s characters left to right into one token: ``c a`` then ``ca t</w>``."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    merged = symbols[0]
    for symbol in symbols[1:]:
        pair = f"{merged} {symbol}"
        merged += symbol
        if merged not in vocab:
            merges.append(pair)
            vocab[merged] = len(vocab)


# What SD 2.x changes in each component, beyond a wider text encoder (OpenCLIP's 1024 at full
# size; 64 in the tiny model): OpenCLIP's GELU, per-block head dimensions with linear
# projections in the UNet's transformers, and v-prediction (SD 2.x at 768 px).
SD2_TEXT = {"hidden_act": "gelu"}
SD2_UNET = {"attention_head_dim": (2, 4), "use_linear_projection": True}
TINY_SD2_WIDTH = 64


def tiny_components(seed: int = 0, width: int = 32, family: str = "sd1") -> dict[str, Any]:
    """Seeded tiny text encoder, UNet and VAE with SD 1.x's (or ``family="sd2"``: SD 2.x's)
    structure, at diffusers' own test sizes."""
    sd2 = family == "sd2"
    torch.manual_seed(seed)
    unet = tiny_unet(width, **(SD2_UNET if sd2 else {}))
    torch.manual_seed(seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_config(width, **(SD2_TEXT if sd2 else {})))
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def tiny_unet(cross_attention_dim: int, **changes: Any) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` at diffusers' test size: two blocks, the second with
    cross-attention over ``cross_attention_dim``-wide text states."""
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=32,
        **changes,
    )


def tiny_vae(**changes: Any) -> AutoencoderKL:
    """An ``AutoencoderKL`` at diffusers' test size: 2 blocks, so a latent cell is 2 pixels."""
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
        **changes,
    )


def tiny_text_config(width: int, **changes: Any) -> CLIPTextConfig:
    """A CLIP text encoder's config at diffusers' test size (5 layers, 4 heads), ``width`` wide."""
    values: dict[str, Any] = {
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_size": width,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "pad_token_id": 1,
        "vocab_size": 1000,
        "max_position_embeddings": MAX_LENGTH,
    }
    return CLIPTextConfig(**{**values, **changes})


def build_tiny_model(folder: Path, seed: int = 0, width: int = 32, family: str = "sd1") -> Path:
    """Write a tiny seeded SD 1.x model (``family="sd2"``: SD 2.x, v-prediction) to ``folder``
    in the diffusers layout and return it."""
    # The pipeline class pulls in image processors; import it only when a folder is written.
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    write_clip_tokenizer(folder / "_tokenizer_src")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "_tokenizer_src")
    components = tiny_components(seed, width, family)
    text_encoder = components["text_encoder"]
    assert isinstance(text_encoder, CLIPTextModel)
    fit_text_encoder_to_tokenizer(text_encoder, tokenizer)
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
        prediction_type="v_prediction" if family == "sd2" else "epsilon",
    )
    pipeline = StableDiffusionPipeline(
        vae=components["vae"],
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=components["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    for leftover in (folder / "_tokenizer_src").iterdir():
        leftover.unlink()
    (folder / "_tokenizer_src").rmdir()
    return folder


def fit_text_encoder_to_tokenizer(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
    """Size the embedding table to the vocabulary and set the real BOS/EOS/pad ids."""
    text_encoder.resize_token_embeddings(len(tokenizer))
    config = text_encoder.config
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    text_encoder.eos_token_id = tokenizer.eos_token_id


def sd15_shape_components(seed: int = 0) -> dict[str, Any]:
    """Stable Diffusion 1.5's exact component configs with seeded random weights.

    A 49408 × 768 token table and 12-layer CLIP text encoder, the 860M-parameter UNet and the
    83M-parameter VAE: no weights can be downloaded here, but the costs are the real ones.
    """
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=MAX_LENGTH,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,  # as SD 1.5's own config: DDIM must not clip its x0 estimate
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}


def sd15_shape_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:  # -> BaseModel
    """An in-memory ``BaseModel`` with SD 1.5's shapes (see ``sd15_shape_components``).

    Its tokenizer is the small one from ``write_clip_tokenizer``: prompts use a few hundred ids
    of the 49408-row table, which changes no cost. Its identity is ``sd15-shape-seed{seed}``.
    """
    import tempfile

    from textinv.model import BaseModel

    with tempfile.TemporaryDirectory() as folder:
        write_clip_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    components = sd15_shape_components(seed)
    for module in components.values():
        module.requires_grad_(False)
        module.eval()
        if dtype != torch.float32:
            module.to(dtype)
    return BaseModel(
        path=Path("sd15-shape"),
        tokenizer=tokenizer,
        text_encoder=components["text_encoder"],
        unet=components["unet"],
        vae=components["vae"],
        scheduler_config=dict(SD15_SCHEDULER_CONFIG),
        model_hash=f"sd15-shape-seed{seed}",
    )


SD15_SHAPE = "sd15-shape"
SHAPE_MODELS = (SD15_SHAPE, "sdxl-shape")  # the names load_benchmark_model builds in memory


def load_benchmark_model(name: str | None, dtype: torch.dtype = torch.float32) -> Any:
    """A benchmark's model: ``sd15-shape`` or ``sdxl-shape`` (built in memory), a model
    folder, or ``None`` for the embedded model. Returns a ``BaseModel``."""
    from textinv.testing_sdxl import SDXL_SHAPE, sdxl_shape_model

    if name == SD15_SHAPE:
        return sd15_shape_model(dtype=dtype)
    if name == SDXL_SHAPE:
        return sdxl_shape_model(dtype=dtype)
    from textinv.model import load_base_model

    return load_base_model(name, dtype=dtype)
