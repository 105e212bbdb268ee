"""``textinv toy train``: train the embedded shapes-world model from scratch, seeded, on a CPU.

The model is Stable Diffusion's architecture at toy size: a CLIP-style tokenizer (the world's
words, from ``write_clip_tokenizer``) and ``CLIPTextModel``, a ``UNet2DConditionModel`` and an
``AutoencoderKL`` with a 4× downsampling (32×32 px images ↔ 4×8×8 latents), saved in the diffusers
layout by ``StableDiffusionPipeline.save_pretrained``. Training runs in stages, each resumable:

1. render a fixed seeded data set of captioned scenes (``world.sample_scenes``);
2. train the VAE on it (reconstruction + a tiny KL term);
3. encode every image's latent distribution once, and set the VAE's scaling factor;
4. train the UNet and the text encoder jointly on noise prediction, with 10% empty captions for
   classifier-free guidance, offset noise (for flat backgrounds) and an EMA of both.

A checkpoint (every stage's state, the optimizers and the random generators) is written every
few minutes, and the EMA model is saved in the diffusers layout beside it, so that samples can be
looked at while training goes on. ``--resume`` continues from the checkpoint.

The shipped model (``textinv/toy/model``) is this script's defaults, seed 0: 40,000 scenes, 2,500
VAE steps (batch 16) and 8,000 UNet + text encoder steps (batch 32), about 12 + 55 minutes on one
CPU thread of a shared 2-core machine, then ``python -m textinv.toy.ship --from out/toy/model``.
Resuming after an interruption repeats the same losses step for step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from textinv.testing import MAX_LENGTH, write_clip_tokenizer
from textinv.toy import world

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
DATASET = "dataset.pt"
MODEL_DIR = "model"
# SD 1.x's noise schedule; training uses DDPM, the saved model PNDM as SD 1.x ships.
SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


@dataclass(frozen=True)
class ToyTrainConfig:
    out: Path = Path("out/toy")
    seed: int = 0
    dataset_size: int = 40_000
    vae_steps: int = 2_500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    unet_steps: int = 8_000
    unet_batch: int = 32
    unet_lr: float = 6e-4
    warmup_steps: int = 300
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    offset_noise: float = 0.05
    checkpoint_every_s: float = 300.0
    text_width: int = 64
    unet_channels: tuple[int, ...] = (64, 96, 128)
    unet_layers: int = 1
    vae_channels: tuple[int, ...] = (16, 32, 64)

    def __post_init__(self) -> None:
        for name in ("dataset_size", "vae_batch", "unet_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("vae_steps", "unet_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")


# 1. The model's components


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


# 2. Training state, checkpoints


@dataclass
class ToyState:
    config: ToyTrainConfig
    tokenizer: CLIPTokenizer
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    ema_text_encoder: CLIPTextModel
    ema_unet: UNet2DConditionModel
    vae_opt: torch.optim.Optimizer
    unet_opt: torch.optim.Optimizer
    generator: torch.Generator
    vae_step: int = 0
    unet_step: int = 0
    scaling_factor: float | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


def new_state(config: ToyTrainConfig) -> ToyState:
    tokenizer = build_tokenizer(config.out / "tokenizer_src")
    torch.manual_seed(config.seed)
    vae = build_vae(config.vae_channels)
    text_encoder = build_text_encoder(tokenizer, config.text_width)
    unet = build_unet(config.text_width, config.unet_channels, config.unet_layers)
    ema_text_encoder = build_text_encoder(tokenizer, config.text_width)
    ema_unet = build_unet(config.text_width, config.unet_channels, config.unet_layers)
    ema_text_encoder.load_state_dict(text_encoder.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    for module in (ema_text_encoder, ema_unet):
        module.requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    return ToyState(
        config=config,
        tokenizer=tokenizer,
        vae=vae,
        text_encoder=text_encoder,
        unet=unet,
        ema_text_encoder=ema_text_encoder,
        ema_unet=ema_unet,
        vae_opt=torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0),
        unet_opt=torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01),
        generator=torch.Generator().manual_seed(config.seed),
    )


_MODULES = ("vae", "text_encoder", "unet", "ema_text_encoder", "ema_unet", "vae_opt", "unet_opt")


def save_checkpoint(state: ToyState) -> Path:
    payload = {name: getattr(state, name).state_dict() for name in _MODULES}
    payload |= {
        "generator": state.generator.get_state(),
        "vae_step": state.vae_step,
        "unet_step": state.unet_step,
        "scaling_factor": state.scaling_factor,
        "history": state.history,
    }
    path = state.config.out / CHECKPOINT
    torch.save(payload, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return path


def load_checkpoint(state: ToyState) -> None:
    payload = torch.load(state.config.out / CHECKPOINT, weights_only=False)
    for name in _MODULES:
        getattr(state, name).load_state_dict(payload[name])
    state.generator.set_state(payload["generator"])
    state.vae_step = int(payload["vae_step"])
    state.unet_step = int(payload["unet_step"])
    state.scaling_factor = payload["scaling_factor"]
    state.history = list(payload["history"])


# 3. Data


@dataclass(frozen=True)
class Dataset:
    pixels: torch.Tensor  # [N, 3, 32, 32] uint8
    captions: list[str]


def load_or_render_dataset(config: ToyTrainConfig) -> Dataset:
    path = config.out / DATASET
    if path.is_file():
        payload = torch.load(path, weights_only=False)
        if len(payload["captions"]) == config.dataset_size:
            return Dataset(payload["pixels"], payload["captions"])
    scenes = world.sample_scenes(config.seed, config.dataset_size)
    pixels = torch.from_numpy(np.stack([np.asarray(world.render(s)) for s in scenes]))
    dataset = Dataset(pixels.permute(0, 3, 1, 2).contiguous(), [s.caption for s in scenes])
    torch.save({"pixels": dataset.pixels, "captions": dataset.captions}, path)
    return dataset


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] → float [-1, 1], the VAE's input range."""
    return pixels.float() / 127.5 - 1.0


# 4. The VAE


def vae_step(state: ToyState, data: Dataset) -> float:
    config = state.config
    index = torch.randint(len(data.captions), (config.vae_batch,), generator=state.generator)
    images = to_unit_range(data.pixels[index])  # [B, 3, 32, 32]
    posterior = state.vae.encode(images).latent_dist
    latents = posterior.mean + posterior.std * torch.randn(
        posterior.mean.shape, generator=state.generator
    )
    recon = state.vae.decode(latents).sample
    loss = F.mse_loss(recon, images) + 0.5 * F.l1_loss(recon, images)
    loss = loss + 1e-6 * posterior.kl().mean()
    lr = config.vae_lr * 0.5 * (1 + math.cos(math.pi * state.vae_step / max(config.vae_steps, 1)))
    for group in state.vae_opt.param_groups:
        group["lr"] = lr
    state.vae_opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.vae.parameters(), 1.0)
    state.vae_opt.step()
    state.vae_step += 1
    return loss.item()


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image's posterior mean and std, [N, 4, 8, 8] each."""
    means, stds = [], []
    vae.eval()
    for start in range(0, len(data.captions), 500):
        posterior = vae.encode(to_unit_range(data.pixels[start : start + 500])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    vae.train()
    return torch.cat(means), torch.cat(stds)


# 5. The UNet and the text encoder


def tokenize(tokenizer: CLIPTokenizer, captions: list[str]) -> torch.Tensor:
    """[N, 77] ids, padded as the pipeline pads them."""
    ids = tokenizer(
        captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    assert isinstance(ids, torch.Tensor)
    return ids


def unet_lr(config: ToyTrainConfig, step: int) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < config.warmup_steps:
        return config.unet_lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(config.unet_steps - config.warmup_steps, 1)
    return config.unet_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def unet_step(
    state: ToyState,
    latents: tuple[torch.Tensor, torch.Tensor],
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    noise_scheduler: DDPMScheduler,
) -> float:
    config, gen = state.config, state.generator
    index = torch.randint(ids.shape[0], (config.unet_batch,), generator=gen)
    mean, std = latents[0][index], latents[1][index]  # [B, 4, 8, 8]
    assert state.scaling_factor is not None
    x0 = (mean + std * torch.randn(mean.shape, generator=gen)) * state.scaling_factor
    batch_ids = ids[index].clone()  # [B, 77]
    dropped = torch.rand(config.unet_batch, generator=gen) < config.caption_dropout
    batch_ids[dropped] = empty_ids
    noise = torch.randn(x0.shape, generator=gen)
    # Offset noise: a per-channel constant, so the model can move a whole background's colour.
    noise = noise + config.offset_noise * torch.randn((x0.shape[0], 4, 1, 1), generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (x0.shape[0],), generator=gen)
    noisy = noise_scheduler.add_noise(x0, noise, t)
    hidden = state.text_encoder(batch_ids).last_hidden_state  # [B, 77, D]
    prediction = state.unet(noisy, t, encoder_hidden_states=hidden).sample
    loss = F.mse_loss(prediction, noise)
    for group in state.unet_opt.param_groups:
        group["lr"] = unet_lr(config, state.unet_step)
    state.unet_opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [*state.unet.parameters(), *state.text_encoder.parameters()]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    state.unet_opt.step()
    update_ema(state)
    state.unet_step += 1
    return loss.item()


@torch.no_grad()
def update_ema(state: ToyState) -> None:
    decay = min(state.config.ema_decay, (1 + state.unet_step) / (10 + state.unet_step))
    pairs = ((state.ema_unet, state.unet), (state.ema_text_encoder, state.text_encoder))
    for ema, live in pairs:
        for e, p in zip(ema.parameters(), live.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


# 6. Saving in the diffusers layout


def save_model(state: ToyState, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """The EMA text encoder and UNet with the VAE, as a ``StableDiffusionPipeline`` folder."""
    # The pipeline class pulls in image processors; import it only when a folder is written.
    from diffusers import StableDiffusionPipeline

    assert state.scaling_factor is not None
    state.vae.register_to_config(scaling_factor=state.scaling_factor)
    text_encoder = build_text_encoder(state.tokenizer, state.config.text_width)
    text_encoder.load_state_dict(state.ema_text_encoder.state_dict())
    unet = build_unet(state.config.text_width, state.config.unet_channels, state.config.unet_layers)
    unet.load_state_dict(state.ema_unet.state_dict())
    vae = build_vae(state.config.vae_channels)
    vae.load_state_dict(state.vae.state_dict())
    vae.register_to_config(scaling_factor=state.scaling_factor)
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=state.tokenizer,
        unet=unet,
        scheduler=inference_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.to(dtype)
    pipeline.save_pretrained(folder)
    return folder


def inference_scheduler() -> PNDMScheduler:
    """SD 1.x's inference scheduler. Like SD 1.5's config it records ``clip_sample: false``:
    DDIM built from this config must not clip x0 to [-1, 1], which this VAE's latents exceed."""
    scheduler = PNDMScheduler(
        **SCHEDULE, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False
    )
    scheduler.register_to_config(clip_sample=False)
    return scheduler


# 7. The loop


def train(config: ToyTrainConfig, resume: bool = False) -> Path:
    """Run (or finish) every stage and return the saved model folder."""
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(json.dumps(_config_json(config), indent=2))
    state = new_state(config)
    if resume and (config.out / CHECKPOINT).is_file():
        load_checkpoint(state)
        log.info("resumed at VAE step %d, UNet step %d", state.vae_step, state.unet_step)
    data = load_or_render_dataset(config)
    log.info("data set: %d scenes", len(data.captions))
    last_save = time.monotonic()
    started = time.monotonic()
    while state.vae_step < config.vae_steps:
        loss = vae_step(state, data)
        if state.vae_step % 50 == 0:
            _log(state, "vae", loss, started)
        if time.monotonic() - last_save > config.checkpoint_every_s:
            save_checkpoint(state)
            last_save = time.monotonic()
    latents = encode_latents(state.vae, data)
    if state.scaling_factor is None:
        state.scaling_factor = float(1.0 / latents[0].std())
        log.info("latent scaling factor %.4f", state.scaling_factor)
        save_checkpoint(state)
    ids = tokenize(state.tokenizer, data.captions)
    empty_ids = tokenize(state.tokenizer, [""])[0]
    noise_scheduler = DDPMScheduler(**SCHEDULE)
    while state.unet_step < config.unet_steps:
        loss = unet_step(state, latents, ids, empty_ids, noise_scheduler)
        if state.unet_step % 50 == 0:
            _log(state, "unet", loss, started)
        if time.monotonic() - last_save > config.checkpoint_every_s:
            save_checkpoint(state)
            save_model(state, config.out / MODEL_DIR)
            last_save = time.monotonic()
    save_checkpoint(state)
    return save_model(state, config.out / MODEL_DIR)


def _log(state: ToyState, stage: str, loss: float, started: float) -> None:
    step = state.vae_step if stage == "vae" else state.unet_step
    entry = {"stage": stage, "step": step, "loss": loss, "elapsed_s": time.monotonic() - started}
    state.history.append(entry)  # type: ignore[arg-type]
    log.info("%s step %d loss %.4f (%.0f s)", stage, step, loss, entry["elapsed_s"])


def _config_json(config: ToyTrainConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["out"] = str(config.out)
    return values


# 8. Command line


def add_train_subcommand(toy_subparsers: argparse._SubParsersAction) -> None:
    parser = toy_subparsers.add_parser("train", help="train the shapes-world model from scratch")
    add_train_arguments(parser)
    parser.set_defaults(func=run_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ToyTrainConfig()
    parser.add_argument("--out", type=Path, default=defaults.out, help="where checkpoints go")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--dataset-size", type=int, default=defaults.dataset_size)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--unet-batch", type=int, default=defaults.unet_batch)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def run_train(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    config = ToyTrainConfig(
        out=args.out,
        seed=args.seed,
        dataset_size=args.dataset_size,
        vae_steps=args.vae_steps,
        unet_steps=args.unet_steps,
        unet_batch=args.unet_batch,
    )
    folder = train(config, resume=args.resume)
    print(f"model saved to {folder}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="textinv toy train")
    add_train_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_train(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
