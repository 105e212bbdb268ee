"""The inversion trainer: learn K new token vectors for a concept from a few images.

DESIGN decisions 2 and 3. Only the K new vectors train: they are one fp32 ``nn.Parameter`` [K, D],
spliced into the prompt embeddings after the table lookup (``PromptEncoder.embed_tokenized``), then
run through the frozen text encoder (``EmbeddingsTextEncoder``) and the frozen UNet. The vocabulary
table is never in the optimizer, so every frozen row stays bit-identical by construction. Templates
are tokenized once; VAE latent distributions are encoded once per image and augmentation variant.

Determinism: one CPU ``torch.Generator`` draws everything the loop samples (images, variants,
templates, latents, noise, timesteps). Checkpoints hold the vectors, the optimizer, the LR schedule,
the loss scaler, the early-stopping history and the generator state, so a resumed run continues
bit-identically on CPU.

``invert(config, progress=..., should_stop=...)`` is the Python API; ``textinv invert`` and the
server's inversion jobs call it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from textinv.concepts import Concept, ConceptMetadata, check_token, save_concept
from textinv.conv_kernels import im2col_convolutions, use_im2col_convolutions
from textinv.data import (
    CROP_MODES,
    DEFAULT_MAX_IMAGES,
    AugmentationSpec,
    LatentCache,
    TrainingImage,
    encode_latent_cache,
    load_training_images,
)
from textinv.errors import InvalidInputError
from textinv.fileio import atomic_write_bytes, atomic_write_text
from textinv.model import BaseModel, load_base_model
from textinv.prompts import PromptEncoder, TokenizedPrompt
from textinv.templates import PROPERTIES, templates_for
from textinv.text_encoder import EmbeddingsTextEncoder

log = logging.getLogger(__name__)

CONCEPT_FILE = "learned_embeds.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
VALIDATION_DIR = "validation"
MAX_TRAIN_VECTORS = 16
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LR_SCHEDULES = ("constant", "cosine")
# A model name that needs no folder: SD 1.5's exact shapes with seeded random weights.
SD15_SHAPE = "sd15-shape"
_CHECKPOINT_NAME = re.compile(r"^step-(\d+)\.pt$")
# Config fields that may change between a run and its --resume; every other one must match.
_RESUMABLE_CHANGES = frozenset(
    {
        "steps",
        "out",
        "resume",
        "overwrite",
        "checkpoint_every",
        "validate_every",
        "validation_prompt",
        "num_validation_images",
        "validation_steps",
        "device",
        "model",
        "images",
        "max_images",
    }
)


@dataclass
class InvertConfig:
    """Everything one inversion run needs. ``textinv invert`` maps its flags one to one."""

    images: str
    token: str
    init: str
    out: str
    model: str | None = None  # a diffusers folder, a hub id, or "sd15-shape"
    vectors: int = 1
    learnable_property: str = "object"  # --property
    steps: int = 3000
    batch_size: int = 1
    grad_accum: int = 4
    lr: float = 2e-3
    scale_lr: bool = False  # multiply lr by batch_size × grad_accum (diffusers' --scale_lr)
    lr_schedule: str = "constant"
    warmup: int = 0
    weight_decay: float = 1e-2
    resolution: int | None = None  # None: the model's own (512 for SD 1.5)
    precision: str = "fp32"
    seed: int = 0
    checkpoint_every: int = 500
    resume: bool = False
    overwrite: bool = False
    # Data
    max_images: int = DEFAULT_MAX_IMAGES
    crop: str = "center"
    crop_scale: tuple[float, float] = (0.8, 1.0)
    num_crops: int = 4
    flip: bool = True
    alpha_mask: bool = False
    # Method options
    min_snr_gamma: float | None = None
    embedding_reg_weight: float = 0.0
    gradient_checkpointing: bool = False
    # Early stopping on the fixed evaluation batch (DVAR, Voronov et al. 2023)
    eval_every: int = 0  # 0: only when early stopping is on (then every 25 steps)
    eval_batch_size: int = 4
    early_stop: int = 0  # DVAR window, in evaluations; 0 turns early stopping off
    early_stop_threshold: float = 0.15
    # Validation grids
    validate_every: int = 0
    validation_prompt: str | None = None  # default "a photo of a {token}" / "a painting in ..."
    num_validation_images: int = 4
    validation_steps: int = 25
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["crop_scale"] = list(self.crop_scale)
        return data

    @property
    def effective_lr(self) -> float:
        return self.lr * (self.batch_size * self.grad_accum if self.scale_lr else 1)

    @property
    def effective_eval_every(self) -> int:
        if self.eval_every > 0:
            return self.eval_every
        return 25 if self.early_stop > 0 else 0


@dataclass(frozen=True)
class Progress:
    """What the trainer reports after every step."""

    step: int
    total_steps: int
    loss: float
    lr: float
    elapsed_s: float
    steps_per_s: float
    eta_s: float
    eval_loss: float | None = None
    event: str = "step"  # "step", "checkpoint", "validation", "early_stop", "stopped", "done"
    path: str | None = None  # the file a checkpoint or validation event wrote


ProgressCallback = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------
# Checks that run before any training


def check_config(config: InvertConfig) -> None:
    """Refuse bad values, naming each, before anything is loaded."""
    problems = []
    if not 1 <= config.vectors <= MAX_TRAIN_VECTORS:
        problems.append(f"--vectors {config.vectors}: K must be 1 to {MAX_TRAIN_VECTORS}")
    if config.resolution is not None and (config.resolution <= 0 or config.resolution % 8):
        problems.append(f"--resolution {config.resolution}: must be a positive multiple of 8")
    if config.steps <= 0:
        problems.append(f"--steps {config.steps}: must be positive")
    for name in ("batch_size", "grad_accum", "max_images", "num_crops", "eval_batch_size"):
        if getattr(config, name) <= 0:
            problems.append(f"--{name.replace('_', '-')} {getattr(config, name)}: must be positive")
    for name in ("checkpoint_every", "validate_every", "eval_every", "warmup", "early_stop"):
        if getattr(config, name) < 0:
            problems.append(f"--{name.replace('_', '-')} {getattr(config, name)}: must be ≥ 0")
    if not config.lr > 0 or not math.isfinite(config.lr):
        problems.append(f"--lr {config.lr}: must be a positive number")
    if config.learnable_property not in PROPERTIES:
        problems.append(
            f"--property {config.learnable_property!r}: must be one of {', '.join(PROPERTIES)}"
        )
    if config.lr_schedule not in LR_SCHEDULES:
        problems.append(
            f"--lr-schedule {config.lr_schedule!r}: must be one of {', '.join(LR_SCHEDULES)}"
        )
    if config.precision not in PRECISIONS:
        problems.append(f"--precision {config.precision!r}: must be one of {', '.join(PRECISIONS)}")
    if config.crop not in CROP_MODES:
        problems.append(f"--crop {config.crop!r}: must be one of {', '.join(CROP_MODES)}")
    low, high = config.crop_scale
    if not 0 < low <= high <= 1:
        problems.append(f"--crop-scale {low} {high}: need 0 < min ≤ max ≤ 1")
    if config.min_snr_gamma is not None and not config.min_snr_gamma > 0:
        problems.append(f"--min-snr-gamma {config.min_snr_gamma}: must be positive")
    if config.embedding_reg_weight < 0:
        problems.append(f"--embedding-reg-weight {config.embedding_reg_weight}: must be ≥ 0")
    if not config.init or not config.init.strip():
        problems.append("--init: the initializer text is empty; give a word such as 'toy'")
    if config.resume and config.overwrite:
        problems.append("--resume and --overwrite contradict each other; pass one")
    if problems:
        raise InvalidInputError("; ".join(problems))


def check_output_folder(config: InvertConfig) -> None:
    """An output folder holding a concept or checkpoints needs ``--resume`` or ``--overwrite``."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output {str(out)!r} exists and is not a folder")
    if config.resume or config.overwrite:
        return
    if (out / CONCEPT_FILE).exists():
        raise InvalidInputError(
            f"output folder {str(out)!r} already holds a concept ({CONCEPT_FILE}); pass --resume "
            "to continue that run or --overwrite to replace it"
        )
    if _checkpoints(out):
        raise InvalidInputError(
            f"output folder {str(out)!r} holds checkpoints of an earlier run; pass --resume to "
            "continue it or --overwrite to start over"
        )


def initializer_ids(tokenizer: Any, init: str) -> list[int]:
    """The token ids of ``init`` without special tokens; an error if there are none."""
    if not init or not init.strip():
        raise InvalidInputError("--init: the initializer text is empty; give a word such as 'toy'")
    ids = [int(i) for i in tokenizer(init, add_special_tokens=False).input_ids]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids = [i for i in ids if i not in special]
    if not ids:
        raise InvalidInputError(f"--init {init!r} tokenizes to nothing; give a word such as 'toy'")
    return ids


def spread_initializer(table: torch.Tensor, ids: Sequence[int], num_vectors: int) -> torch.Tensor:
    """K initial vectors [K, D] (fp32) from M init tokens.

    Vector i takes the rows of init tokens floor(i·M/K) up to (not including) floor((i+1)·M/K),
    at least one, averaged: with M ≤ K each vector copies one token in order (tokens repeat), with
    M > K consecutive tokens are averaged into each vector.
    """
    m = len(ids)
    rows = []
    for i in range(num_vectors):
        start = i * m // num_vectors
        stop = max((i + 1) * m // num_vectors, start + 1)
        group = torch.tensor(list(ids[start:stop]), dtype=torch.long, device=table.device)
        rows.append(table.detach()[group].float().mean(dim=0))
    return torch.stack(rows).cpu().contiguous()


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _State:
    """What a checkpoint holds besides the vectors."""

    step: int = 0
    eval_history: list[float] = field(default_factory=list)
    stopped_early: bool = False


@dataclass(frozen=True)
class EvalBatch:
    """A fixed evaluation batch: the same latents, noise, timesteps and prompts every time."""

    latents: torch.Tensor  # scaled clean latents [E, C, h, w]
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: tuple[TokenizedPrompt, ...]
    masks: torch.Tensor | None


class Trainer:
    """One prepared inversion run. ``prepare`` does every check and every one-off cost."""

    def __init__(
        self,
        config: InvertConfig,
        model: BaseModel,
        images: list[TrainingImage],
        device: torch.device,
    ) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.out = Path(config.out)
        self.dtype = PRECISIONS[config.precision]
        tokenizer = model.tokenizer
        check_token(config.token, tokenizer.get_vocab(), config.vectors)
        self.init_ids = initializer_ids(tokenizer, config.init)
        self.resolution = config.resolution or model.default_resolution
        if self.resolution % model.vae_scale_factor:
            raise InvalidInputError(
                f"--resolution {self.resolution}: must be a multiple of the VAE's "
                f"{model.vae_scale_factor}"
            )
        self.encoder = PromptEncoder(tokenizer, model.token_embedding)
        self.text = EmbeddingsTextEncoder(model.text_encoder)
        self.scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.prediction_type = str(self.scheduler.config.prediction_type)
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InvalidInputError(
                f"the model's scheduler predicts {self.prediction_type!r}; the trainer supports "
                "epsilon and v_prediction"
            )
        alphas = self.scheduler.alphas_cumprod.to(torch.float64)
        self.snr = (alphas / (1 - alphas)).float()  # [T]
        self.init_vectors = spread_initializer(model.token_embedding, self.init_ids, config.vectors)
        self.vectors = torch.nn.Parameter(self.init_vectors.clone().to(device))
        self.optimizer = torch.optim.AdamW(
            [self.vectors],
            lr=config.effective_lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=config.weight_decay,
        )
        use_scaler = config.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        # Prompts: tokenized once, per image (its caption, or every template).
        sizes = {config.token: config.vectors}
        templates = templates_for(config.learnable_property)
        self.prompts: list[list[TokenizedPrompt]] = []
        for image in images:
            texts = [image.caption] if image.caption else list(templates)
            self.prompts.append(
                [self.encoder.tokenize(t.format(config.token), sizes) for t in texts]
            )
        # Latents: every (image, variant) encoded once.
        self.spec = AugmentationSpec(
            resolution=self.resolution,
            crop=config.crop,
            crop_scale=config.crop_scale,
            num_crops=config.num_crops,
            flip=config.flip,
            seed=config.seed,
        )
        started = time.perf_counter()
        self.cache: LatentCache = encode_latent_cache(
            images,
            model.vae,
            self.spec,
            alpha_mask=config.alpha_mask,
            vae_scale_factor=model.vae_scale_factor,
        )
        self.cache_seconds = time.perf_counter() - started
        self.eval_batch = self._make_eval_batch()
        self.generator = torch.Generator().manual_seed(config.seed)
        self.state = _State()

    # -- sampling --------------------------------------------------------------------------

    def _make_eval_batch(self) -> EvalBatch:
        """Fixed latents (distribution means), noise, spread timesteps and prompts."""
        n = self.config.eval_batch_size
        generator = torch.Generator().manual_seed(self.config.seed + 7919)
        images = torch.arange(n) % self.cache.num_images
        variants = torch.zeros(n, dtype=torch.long)
        latents = self.cache.mean[images, variants] * self.model.latent_scaling
        noise = torch.randn(latents.shape, generator=generator)
        # Timesteps at the centres of n equal bins: the whole noise range, fixed.
        timesteps = ((torch.arange(n) + 0.5) * self.num_train_timesteps / n).long()
        prompts = tuple(
            self.prompts[int(i)][k % len(self.prompts[int(i)])] for k, i in enumerate(images)
        )
        return EvalBatch(latents, noise, timesteps, prompts, self.cache.masks(images, variants))

    def _sample_batch(
        self,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[TokenizedPrompt], Any]:
        b, g = self.config.batch_size, self.generator
        images = torch.randint(0, self.cache.num_images, (b,), generator=g)
        variants = torch.randint(0, self.cache.num_variants, (b,), generator=g)
        choices = torch.randint(0, 1 << 30, (b,), generator=g).tolist()
        prompts = [
            self.prompts[int(i)][c % len(self.prompts[int(i)])]
            for i, c in zip(images.tolist(), choices, strict=True)
        ]
        latents = self.cache.sample(images, variants, g, self.model.latent_scaling)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, self.num_train_timesteps, (b,), generator=g)
        return latents, noise, timesteps, prompts, self.cache.masks(images, variants)

    # -- the loss --------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        weights = next(self.model.unet.parameters()).dtype
        if self.dtype == torch.float32 or weights == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def loss(
        self,
        vectors: torch.Tensor,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        prompts: Sequence[TokenizedPrompt],
        masks: torch.Tensor | None = None,
        *,
        weighted: bool = True,
    ) -> torch.Tensor:
        """The denoising loss of one batch with ``vectors`` spliced in (fp32 scalar)."""
        device = self.device
        latents, noise = latents.to(device), noise.to(device)
        timesteps_d = timesteps.to(device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps_d)
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(latents, noise, timesteps_d)
        embeds = self.encoder.embed_tokenized(prompts, {self.config.token: vectors})
        unet_dtype = next(self.model.unet.parameters()).dtype
        # fp32 on 1-2 CPU threads: the UNet's convolutions as im2col + GEMM (conv_kernels.py).
        # Not with gradient checkpointing: its recomputation runs outside this block.
        fast_convs = (
            self.dtype == torch.float32
            and not self.config.gradient_checkpointing
            and use_im2col_convolutions(device, unet_dtype)
        )
        with self._autocast():
            hidden, _ = self.text(embeds.inputs_embeds.to(device), embeds.eos_positions.to(device))
            with im2col_convolutions(fast_convs):
                prediction = self.model.unet(
                    noisy.to(unet_dtype), timesteps_d, encoder_hidden_states=hidden.to(unet_dtype)
                ).sample
        error = (prediction.float() - target.float()) ** 2  # [B, C, h, w]
        if masks is not None:
            masks = masks.to(device)
            per_sample = (error * masks).sum(dim=(1, 2, 3)) / (
                masks.sum(dim=(1, 2, 3)) * error.shape[1]
            ).clamp_min(1e-6)
        else:
            per_sample = error.mean(dim=(1, 2, 3))
        if weighted and self.config.min_snr_gamma is not None:
            snr = self.snr[timesteps].to(device)
            clipped = snr.clamp(max=self.config.min_snr_gamma)
            weights = (
                clipped / (snr + 1) if self.prediction_type == "v_prediction" else clipped / snr
            )
            per_sample = per_sample * weights
        return per_sample.mean()

    def regularization(self, vectors: torch.Tensor) -> torch.Tensor:
        """The original implementation's ``embedding_reg_weight`` pull toward the initializer."""
        diff = vectors - self.init_vectors.to(vectors.device)
        return self.config.embedding_reg_weight * diff.pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def evaluation_loss(self, vectors: torch.Tensor | None = None) -> float:
        """The plain (unweighted) loss on the fixed evaluation batch, for ``vectors`` or ours."""
        batch = self.eval_batch
        vectors = self.vectors.detach() if vectors is None else vectors.to(self.device)
        return float(
            self.loss(
                vectors,
                batch.latents,
                batch.noise,
                batch.timesteps,
                batch.prompts,
                batch.masks,
                weighted=False,
            )
        )

    # -- the schedule ----------------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        base, warmup, total = self.config.effective_lr, self.config.warmup, self.config.steps
        if warmup and step < warmup:
            return base * (step + 1) / warmup
        if self.config.lr_schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return base

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_state(self) -> dict[str, Any]:
        """Tensors and primitives only, so ``torch.load(weights_only=True)`` reads it back."""
        return {
            "format_version": 1,
            "step": self.state.step,
            "vectors": self.vectors.detach().cpu().clone(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "lr_schedule": {
                "name": self.config.lr_schedule,
                "base_lr": self.config.effective_lr,
                "warmup": self.config.warmup,
                "total_steps": self.config.steps,
                "last_lr": self.lr_at(max(0, self.state.step - 1)),
            },
            "eval_history": torch.tensor(self.state.eval_history, dtype=torch.float64),
            "stopped_early": self.state.stopped_early,
            "fingerprint": self.fingerprint(),
        }

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        data = {k: v for k, v in self.config.to_json().items() if k not in _RESUMABLE_CHANGES}
        data["model_hash"] = self.model.model_hash
        data["num_images"] = self.cache.num_images
        return json.loads(json.dumps(data))

    def save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT_DIR / f"step-{self.state.step}.pt"
        import io

        buffer = io.BytesIO()
        torch.save(self.checkpoint_state(), buffer)
        return atomic_write_bytes(path, buffer.getvalue())

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unreadable, truncated, or not ours
            raise InvalidInputError(
                f"{str(path)!r}: cannot read the checkpoint ({error})"
            ) from error
        theirs = state.get("fingerprint", {})
        ours = self.fingerprint()
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if changed:
            details = ", ".join(f"{k}: {theirs.get(k)!r} → {ours.get(k)!r}" for k in changed)
            raise InvalidInputError(
                f"--resume: {str(path)!r} was made with different settings ({details}); "
                "use the same settings, or --overwrite to start over"
            )
        with torch.no_grad():
            self.vectors.copy_(state["vectors"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.state = _State(
            step=int(state["step"]),
            eval_history=[float(x) for x in state["eval_history"].tolist()],
            stopped_early=bool(state["stopped_early"]),
        )

    # -- the loop --------------------------------------------------------------------------

    def train(
        self,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Concept:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        self._start_run_files()
        if config.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
        try:
            return self._loop(progress, should_stop)
        finally:
            if config.gradient_checkpointing:
                self.model.unet.disable_gradient_checkpointing()

    def _start_run_files(self) -> None:
        config = self.config
        if config.overwrite:
            for name in (CONCEPT_FILE, LOG_FILE):
                (self.out / name).unlink(missing_ok=True)
            for folder in (CHECKPOINT_DIR, VALIDATION_DIR):
                shutil.rmtree(self.out / folder, ignore_errors=True)
        newest = _checkpoints(self.out)[-1:] if config.resume else []
        if newest:
            self.load_checkpoint(newest[0])
            log.info("resuming from %s (step %d)", newest[0], self.state.step)
        elif config.resume:
            log.info("--resume: no checkpoint in %s; starting from step 0", self.out)
        resolved = {
            **config.to_json(),
            "resolution": self.resolution,
            "effective_lr": config.effective_lr,
            "init_token_ids": self.init_ids,
            "model_hash": self.model.model_hash,
            "prediction_type": self.prediction_type,
            "num_images": self.cache.num_images,
            "variants_per_image": self.cache.num_variants,
            "resumed_from_step": self.state.step,
        }
        atomic_write_text(self.out / CONFIG_FILE, json.dumps(resolved, indent=2) + "\n")
        _truncate_log(self.out / LOG_FILE, self.state.step)

    def _loop(
        self, progress: ProgressCallback | None, should_stop: Callable[[], bool] | None
    ) -> Concept:
        config = self.config
        total = config.steps
        eval_every = config.effective_eval_every
        started = time.perf_counter()
        first_step = self.state.step
        report = progress or (lambda _: None)
        event = "done"
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as log_file:
            if self.state.stopped_early:
                event = "early_stop"
            while self.state.step < total and not self.state.stopped_early:
                step_started = time.perf_counter()
                loss = self._optimizer_step()
                self.state.step += 1
                step = self.state.step
                now = time.perf_counter()
                done = step - first_step
                rate = done / max(now - started, 1e-9)
                eval_loss = None
                if eval_every and step % eval_every == 0:
                    eval_loss = self.evaluation_loss()
                    self.state.eval_history.append(eval_loss)
                    if config.early_stop and dvar_plateau(
                        self.state.eval_history, config.early_stop, config.early_stop_threshold
                    ):
                        self.state.stopped_early = True
                record = {
                    "step": step,
                    "loss": loss,
                    "lr": self.lr_at(step - 1),
                    "seconds": round(now - step_started, 6),
                }
                if eval_loss is not None:
                    record["eval_loss"] = eval_loss
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
                info = Progress(
                    step=step,
                    total_steps=total,
                    loss=loss,
                    lr=record["lr"],
                    elapsed_s=now - started,
                    steps_per_s=rate,
                    eta_s=(total - step) / rate if rate > 0 else math.inf,
                    eval_loss=eval_loss,
                )
                report(info)
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the loss became {loss} at step {step}; lower --lr or use fp32"
                    )
                stop = bool(should_stop and should_stop())
                last = step >= total or self.state.stopped_early or stop
                if config.checkpoint_every and (step % config.checkpoint_every == 0 or last):
                    path = self.save_checkpoint()
                    report(dataclasses.replace(info, event="checkpoint", path=str(path)))
                if config.validate_every and (step % config.validate_every == 0 or last):
                    path = self.validate()
                    report(dataclasses.replace(info, event="validation", path=str(path)))
                if self.state.stopped_early:
                    event = "early_stop"
                    log.info("early stop at step %d: the evaluation loss plateaued", step)
                    break
                if stop:
                    event = "stopped"
                    break
        concept = self.write_concept()
        report(
            Progress(
                step=self.state.step,
                total_steps=total,
                loss=math.nan,
                lr=self.lr_at(max(0, self.state.step - 1)),
                elapsed_s=time.perf_counter() - started,
                steps_per_s=0.0,
                eta_s=0.0,
                event=event,
                path=str(self.out / CONCEPT_FILE),
            )
        )
        return concept

    def _optimizer_step(self) -> float:
        config = self.config
        lr = self.lr_at(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.grad_accum):
            latents, noise, timesteps, prompts, masks = self._sample_batch()
            loss = self.loss(self.vectors, latents, noise, timesteps, prompts, masks)
            if config.embedding_reg_weight:
                loss = loss + self.regularization(self.vectors)
            loss = loss / config.grad_accum
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total

    def concept(self) -> Concept:
        metadata = ConceptMetadata(base_model_hash=self.model.model_hash, steps=self.state.step)
        return Concept(self.config.token, self.vectors.detach().cpu().float().clone(), metadata)

    def write_concept(self) -> Concept:
        concept = self.concept()
        save_concept(concept, self.out / CONCEPT_FILE)
        return concept

    # -- validation grids ------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> Path:
        """Render the validation prompt with the current vectors; write a PNG grid."""
        prompt = self.config.validation_prompt or (
            "a photo of a {}"
            if self.config.learnable_property == "object"
            else "a painting in the style of {}"
        )
        grid = render_grid(
            self,
            prompt.replace("{}", self.config.token),
            num_images=self.config.num_validation_images,
            steps=self.config.validation_steps,
            seed=self.config.seed,
        )
        path = self.out / VALIDATION_DIR / f"step-{self.state.step}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        import io

        buffer = io.BytesIO()
        grid.save(buffer, format="PNG")
        return atomic_write_bytes(path, buffer.getvalue())


def dvar_plateau(history: Sequence[float], window: int, threshold: float) -> bool:
    """DVAR's rule: stop when Var(last ``window`` losses) / Var(all losses) < ``threshold``.

    Needs at least two windows of history, so a short noisy start never triggers it.
    """
    if window < 2 or len(history) < 2 * window:
        return False
    values = torch.tensor(list(history), dtype=torch.float64)
    total = float(values.var())
    if total == 0.0:
        return True
    return float(values[-window:].var()) / total < threshold


def _checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out``, oldest step first."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------------------------------
# The Python API


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_for(config: InvertConfig, device: torch.device) -> BaseModel:
    dtype = PRECISIONS[config.precision]
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # fp16 kernels are missing or slow on CPU; autocast instead
    if config.model == SD15_SHAPE:
        from textinv.testing import sd15_shape_model

        model = sd15_shape_model(dtype=dtype)
        for module in (model.text_encoder, model.unet, model.vae):
            module.to(device)
        return model  # type: ignore[no-any-return]
    return load_base_model(config.model, dtype=dtype, device=device)  # None: the embedded model


def prepare(config: InvertConfig, model: BaseModel | None = None) -> Trainer:
    """Every check and every one-off cost (model, images, latent cache), before any training."""
    check_config(config)
    check_output_folder(config)
    images = load_training_images(config.images, config.max_images)
    device = resolve_device(config.device)
    if model is None:
        model = load_model_for(config, device)
    else:
        device = model.unet.device
    return Trainer(config, model, images, device)


def invert(
    config: InvertConfig,
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    model: BaseModel | None = None,
) -> Concept:
    """Learn ``config.token`` from ``config.images``; write ``config.out``; return the concept.

    ``progress`` is called after every step (and on checkpoints, validation grids and the end);
    when ``should_stop()`` turns true the run checkpoints, writes the concept learned so far and
    returns it. ``model`` reuses an already loaded base model (the server keeps one per process).
    """
    return prepare(config, model).train(progress, should_stop)


def iter_log(out: str | Path) -> Iterator[dict[str, Any]]:
    """The step log of a run, one dict per line."""
    with open(Path(out) / LOG_FILE, encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                yield json.loads(line)


def render_grid(
    trainer: Trainer, prompt: str, *, num_images: int, steps: int, seed: int
) -> Any:  # -> PIL.Image.Image
    """``num_images`` samples of ``prompt`` (DDIM, guidance 7.5) with the trainer's current
    vectors, through diffusers' pipeline fed our prompt embeddings; one grid image."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from PIL import Image

    model = trainer.model
    pipeline = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=DDIMScheduler.from_config(
            model.scheduler_config, clip_sample=False, set_alpha_to_one=False
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    concepts = {trainer.config.token: trainer.vectors.detach()}
    unet_dtype = next(model.unet.parameters()).dtype
    device = trainer.device

    def encode(texts: list[str]) -> torch.Tensor:
        embeds = trainer.encoder.embed(texts, concepts)
        hidden, _ = trainer.text(embeds.inputs_embeds.to(device), embeds.eos_positions.to(device))
        return hidden.to(unet_dtype)

    result = pipeline(
        prompt_embeds=encode([prompt] * num_images),
        negative_prompt_embeds=encode([""] * num_images),
        height=trainer.resolution,
        width=trainer.resolution,
        num_inference_steps=steps,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(seed),
        output_type="pil",
    )
    images = result.images
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    side = trainer.resolution
    grid = Image.new("RGB", (columns * side, rows * side), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * side, (index // columns) * side))
    return grid
