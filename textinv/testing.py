"""Small seeded models in the diffusers folder layout, built in code.

No weights can be downloaded on our machines, so tests, benchmarks and the demo build their models
here. ``build_tiny_model`` writes a complete Stable Diffusion 1.x folder (tokenizer, text encoder,
UNet, VAE, scheduler) in about a second; ``build_sd15_shape`` builds, in memory, a model with
Stable Diffusion 1.5's exact component configs and random weights, so that costs are real.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from textinv.clip_vocab import BOS, EOS, MAX_LENGTH, byte_tokens, write_tokenizer
from textinv.families import SCHEDULER_SD, SD15

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


def write_clip_tokenizer(
    folder: Path, words: Iterable[str] = TINY_WORDS, pad_token: str = EOS
) -> None:
    """Write a CLIP-style BPE tokenizer (vocab.json, merges.txt) that knows ``words`` whole.

    The layout and special tokens are those of SD 1.x's tokenizer (``pad_token="!"``: SD 2.x's
    and SDXL's second); only the vocabulary is small (the 512 byte tokens, one merge chain per
    word, and the two special tokens).
    """
    vocab: dict[str, int] = {}
    for token in byte_tokens():
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        _add_merge_chain(word, vocab, merges)
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    write_tokenizer(folder, vocab, merges, pad_token)


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
    """Stable Diffusion 1.5's exact component configs (``textinv.families.SD15``) with seeded
    random weights.

    A 49408 × 768 token table and 12-layer CLIP text encoder, the 860M-parameter UNet and the
    83M-parameter VAE: no weights can be downloaded here, but the costs are the real ones.
    """
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15.text_encoders[0][1]))
    unet = UNet2DConditionModel(**SD15.unet)
    vae = AutoencoderKL(**SD15.vae)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder}


def sd15_shape_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:  # -> BaseModel
    """An in-memory ``BaseModel`` with SD 1.5's shapes (see ``sd15_shape_components``).

    Its tokenizer is CLIP's own (``full_clip_tokenizer``), so its end-of-text id is the one the
    text encoder's config names. Its identity is ``sd15-shape-seed{seed}``.
    """
    from textinv.model import BaseModel

    tokenizer = full_clip_tokenizer()
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
        scheduler_config=dict(SCHEDULER_SD),
        model_hash=f"sd15-shape-seed{seed}",
    )


def full_clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """CLIP's tokenizer with its whole vocabulary (``textinv.clip_vocab``), as the shape models'
    49408-row tables expect (``pad_token="!"``: SDXL's second)."""
    import tempfile

    from textinv.clip_vocab import write_full_clip_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_full_clip_tokenizer(Path(folder), pad_token=pad_token)
        return CLIPTokenizer.from_pretrained(folder)


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
