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
VAE steps (batch 16) and 8,000 UNet + text encoder steps (batch 32), then ``--resume
--unet-steps 16000`` (a warm restart of the cosine schedule: 8,000 more steps, which took the best
captions of the held-out concepts from 0.64 to 0.81 reconstruction). That is about 4 + 26 + 26
minutes with ``--threads 2`` on a 2-core Intel Xeon (run nothing else beside it: another busy
thread slowed it tenfold), then ``python -m textinv.toy.ship --from out/toy/model``.
Resuming after an interruption repeats the same losses step for step.

The parts live in ``textinv.toy.training``; this module is where to import them from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from textinv.toy.training.components import (
    SCHEDULE,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    inference_scheduler,
)
from textinv.toy.training.config import ToyTrainConfig
from textinv.toy.training.saving import (
    CHECKPOINT,
    MODEL_DIR,
    load_checkpoint,
    save_checkpoint,
    save_model,
)
from textinv.toy.training.state import (
    DATASET,
    Dataset,
    RunClock,
    ToyState,
    load_or_render_dataset,
    new_state,
    to_unit_range,
)
from textinv.toy.training.unet_stage import run_unet_stage, tokenize, unet_lr, unet_step, update_ema
from textinv.toy.training.vae_stage import (
    encode_latents,
    fix_scaling_factor,
    run_vae_stage,
    vae_step,
)

__all__ = [
    "CHECKPOINT",
    "DATASET",
    "MODEL_DIR",
    "SCHEDULE",
    "Dataset",
    "ToyState",
    "ToyTrainConfig",
    "build_text_encoder",
    "build_tokenizer",
    "build_unet",
    "build_vae",
    "encode_latents",
    "inference_scheduler",
    "load_checkpoint",
    "load_or_render_dataset",
    "new_state",
    "save_checkpoint",
    "save_model",
    "to_unit_range",
    "tokenize",
    "train",
    "unet_lr",
    "unet_step",
    "update_ema",
    "vae_step",
]

log = logging.getLogger(__name__)


def train(config: ToyTrainConfig, resume: bool = False) -> Path:
    """Run (or finish) every stage and return the saved model folder."""
    # 1. The run's folder and settings, and its state: fresh, or the checkpoint's with ``resume``.
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(json.dumps(config.to_json(), indent=2))
    state = new_state(config)
    if resume and (config.out / CHECKPOINT).is_file():
        load_checkpoint(state)
        log.info("resumed at VAE step %d, UNet step %d", state.vae_step, state.unet_step)
    # 2. The data set, rendered once and cached beside the checkpoint.
    data = load_or_render_dataset(config)
    log.info("data set: %d scenes", len(data.captions))
    clock = RunClock(config.checkpoint_every_s)
    # 3. The VAE, then every image's latent distribution [N, 4, 8, 8] and the scaling factor.
    run_vae_stage(state, data, clock)
    latents = encode_latents(state.vae, data)
    fix_scaling_factor(state, latents)
    # 4. The UNet and the text encoder on the cached latents; the EMA model is what is saved.
    run_unet_stage(state, data, latents, clock)
    save_checkpoint(state)
    return save_model(state, config.out / MODEL_DIR)


def main() -> int:
    """``python -m textinv.toy.train``: the same as ``textinv toy train``."""
    import argparse

    from textinv.toy.commands import add_train_arguments, run_train

    parser = argparse.ArgumentParser(prog="textinv toy train")
    add_train_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return run_train(parser.parse_args())


if __name__ == "__main__":
    raise SystemExit(main())
