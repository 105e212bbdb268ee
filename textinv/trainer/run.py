"""One prepared inversion run: the K vectors, their optimizer, and the loss they descend.

DESIGN decisions 2 and 3. Only the K new vectors train: one fp32 ``nn.Parameter`` [K, D] per text
encoder (SDXL: two, [K, D1] and [K, D2], in one optimizer), spliced into the prompt embeddings after
the table lookup (``PromptEncoder.embed_tokenized``), then run through the frozen text encoder(s)
(``textinv.trainer.text``) and the frozen UNet. The vocabulary tables are never in the optimizer, so
every frozen row stays bit-identical by construction.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from textinv.concepts import Concept, ConceptFormat, ConceptMetadata, save_concept
from textinv.conv_kernels import im2col_convolutions, use_im2col_convolutions
from textinv.data import LatentCache
from textinv.dtypes import torch_dtype
from textinv.hardware import unet_width
from textinv.model import BaseModel
from textinv.sdxl_text import sdxl_time_ids
from textinv.trainer.batches import Batch, EncoderPrompts, TrainingData
from textinv.trainer.config import InitMethod, InvertConfig
from textinv.trainer.loop import ProgressCallback, train_loop
from textinv.trainer.loss import NoiseSchedule, per_sample_error
from textinv.trainer.run_files import CONCEPT_FILE, TrainState
from textinv.trainer.text import Conditioning, TrainingText, VectorSets
from textinv.trainer.traced import Traced
from textinv.trainer.validation import write_validation_grid
from textinv.unet import unet_module
from textinv_client.choices import LrSchedule, Precision


@dataclass(frozen=True)
class Prepared:
    """Everything ``prepare`` checked and computed once, before a ``Trainer`` exists."""

    precision: Precision  # the frozen model's, ``config.precision`` resolved for the device
    resolution: int
    init_ids: list[int]  # the initializer's token ids in the first tokenizer
    init_vectors: VectorSets  # per text encoder [K, D_i] fp32, the initializer's rows
    text: TrainingText
    schedule: NoiseSchedule
    data: TrainingData
    cache_seconds: float  # how long the latent cache took to encode


class Trainer:
    """One prepared inversion run; ``prepare`` builds it, ``train`` runs it."""

    def __init__(
        self, config: InvertConfig, model: BaseModel, device: torch.device, prepared: Prepared
    ) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.out = Path(config.out)
        self.precision = prepared.precision  # config.precision resolved ("auto": by device)
        self.dtype = torch_dtype(prepared.precision)
        self.resolution = prepared.resolution
        self.init_ids = prepared.init_ids
        self.init_vectors = prepared.init_vectors
        self.text = prepared.text
        self.schedule = prepared.schedule
        self.data = prepared.data
        self.cache_seconds = prepared.cache_seconds
        self.vector_sets = tuple(
            torch.nn.Parameter(init.clone().to(device)) for init in self.init_vectors
        )
        self.optimizer = torch.optim.AdamW(
            list(self.vector_sets),
            lr=config.effective_lr,
            betas=(0.9, 0.999),
            eps=1e-8,
            weight_decay=config.weight_decay,
        )
        use_scaler = prepared.precision is Precision.FP16
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.eval_batch = self.data.eval_batch(config.eval_batch_size, config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.state = TrainState()
        # Not with gradient checkpointing: a trace would freeze its recomputation.
        traced = config.trace and not config.gradient_checkpointing
        im2col = self._use_im2col(next(model.unet.parameters()).dtype, traced)
        self.unet = Traced(
            unet_module(model.unet, model.is_sdxl),
            "UNet",
            enabled=traced,
            within=functools.partial(im2col_convolutions, im2col),
        )

    @property
    def vectors(self) -> torch.nn.Parameter:
        """The first (SD 1.x/2.x: the only) text encoder's vectors [K, D]."""
        return self.vector_sets[0]

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    @property
    def cache(self) -> LatentCache:
        return self.data.cache

    @property
    def prompts(self) -> list[list[EncoderPrompts]]:
        return self.data.prompts

    # -- the loss --------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        weights = next(self.model.unet.parameters()).dtype
        if self.dtype == torch.float32 or weights == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _use_im2col(self, unet_dtype: torch.dtype, traced: bool) -> bool:
        # fp32 on 1-2 CPU threads: the UNet's convolutions as im2col + GEMM (conv_kernels.py).
        # Not with gradient checkpointing: its recomputation runs outside the loss's block.
        return (
            self.dtype == torch.float32
            and not self.config.gradient_checkpointing
            and use_im2col_convolutions(
                self.device, unet_dtype, unet_width(self.model.unet), traced=traced
            )
        )

    def loss(
        self, vectors: torch.Tensor | VectorSets, batch: Batch, *, weighted: bool = True
    ) -> torch.Tensor:
        """The denoising loss of ``batch`` with ``vectors`` spliced in (fp32 scalar)."""
        device = self.device
        latents, noise = batch.latents.to(device), batch.noise.to(device)
        timesteps = batch.timesteps.to(device)
        noisy = self.schedule.scheduler.add_noise(latents, noise, timesteps)
        target = self.schedule.target(latents, noise, timesteps)
        with self._autocast():
            text = self.text.condition(batch.prompts, self.config.token, _sets(vectors), device)
            prediction = self._predict(noisy, timesteps, text, batch.crops)
        masks = None if batch.masks is None else batch.masks.to(device)
        per_sample = per_sample_error(prediction, target, masks)  # [B]
        gamma = self.config.min_snr_gamma
        if weighted and gamma is not None:
            weights = self.schedule.min_snr_weights(batch.timesteps, gamma)  # [B]
            per_sample = per_sample * weights.to(device)
        return per_sample.mean()

    def _predict(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        text: Conditioning,
        crops: torch.Tensor,
    ) -> torch.Tensor:
        """The UNet's prediction [B, C, h, w] in its dtype for ``noisy`` [B, C, h, w]: on CPU
        through a trace of it, and in fp32 on few threads with im2col convolutions
        (``textinv.trainer.traced``, ``textinv.conv_kernels``)."""
        dtype = next(self.model.unet.parameters()).dtype
        added = self.added_conditions(text, crops, dtype)
        extra = () if added is None else (added["text_embeds"], added["time_ids"])
        return self.unet(noisy.to(dtype), timesteps, text.hidden.to(dtype), *extra)  # type: ignore[no-any-return]

    def added_conditions(
        self, text: Conditioning, crops: torch.Tensor, dtype: torch.dtype
    ) -> dict[str, torch.Tensor] | None:
        """SDXL's ``added_cond_kwargs``: the pooled text and each latent's crop as
        ``time_ids [B, 6]``; ``None`` for SD 1.x/2.x."""
        if text.pooled is None:
            return None
        side = (self.resolution, self.resolution)
        time_ids = sdxl_time_ids(crops, side).to(self.device, dtype)
        return {"text_embeds": text.pooled.to(dtype), "time_ids": time_ids}

    @property
    def regularized(self) -> bool:
        config = self.config
        cross = config.init_method is InitMethod.CROSS and config.cross_reg_weight > 0
        return config.embedding_reg_weight > 0 or cross

    def regularization(self, vectors: VectorSets) -> torch.Tensor:
        """The pulls toward where the vectors started, summed over the text encoders' sets: the
        original implementation's ``embedding_reg_weight`` × the mean squared distance, and, with
        Cross Initialization, its λ × the mean Euclidean distance (as its code computes it, with
        ``pairwise_distance``'s ε, which keeps the gradient finite at the start)."""
        config = self.config
        cross = config.cross_reg_weight if config.init_method is InitMethod.CROSS else 0.0
        total = torch.zeros((), device=vectors[0].device)
        for own, init in zip(vectors, self.init_vectors, strict=True):
            start = init.to(own.device)
            if config.embedding_reg_weight:
                total = total + config.embedding_reg_weight * (own - start).pow(2).sum(1).mean()
            if cross:
                total = total + cross * F.pairwise_distance(own, start).mean()
        return total

    @torch.no_grad()
    def evaluation_loss(self, vectors: torch.Tensor | VectorSets | None = None) -> float:
        """The plain (unweighted) loss on the fixed evaluation batch, for ``vectors`` or ours."""
        if vectors is None:
            sets = tuple(v.detach() for v in self.vector_sets)
        else:
            sets = tuple(v.to(self.device) for v in _sets(vectors))
        return float(self.loss(sets, self.eval_batch, weighted=False))

    # -- one optimizer step ----------------------------------------------------------------

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        base, warmup, total = self.config.effective_lr, self.config.warmup, self.config.steps
        if warmup and step < warmup:
            return base * (step + 1) / warmup
        if self.config.lr_schedule == LrSchedule.COSINE:
            progress = (step - warmup) / max(1, total - warmup)
            return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return base

    def _optimizer_step(self, should_stop: Callable[[], bool] | None = None) -> float | None:
        """One optimizer step over ``grad_accum`` micro-batches; the summed, scaled loss.

        ``should_stop`` is asked between micro-batches, so a stop waits for one forward/backward
        at most. A stop drops the step whole: its gradients are discarded and the generator is
        rewound, so the trainer stays exactly at its last complete step (what a checkpoint of it
        restores) and ``None`` is returned. Without a stop nothing differs from an unasked run.
        """
        config = self.config
        generator_state = self.generator.get_state()  # [5056] uint8: cheap to keep
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(config.grad_accum):
            if micro and should_stop is not None and should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                self.generator.set_state(generator_state)
                return None
            total += self._micro_step()
        lr = self.lr_at(self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return total

    def _micro_step(self) -> float:
        """Forward and backward of one micro-batch; its gradients add to the vectors' ``.grad``."""
        config = self.config
        batch = self.data.sample(config.batch_size, self.generator)
        loss = self.loss(self.vector_sets, batch)
        if self.regularized:
            loss = loss + self.regularization(self.vector_sets)
        loss = loss / config.grad_accum
        self.scaler.scale(loss).backward()
        return float(loss.detach())

    # -- the run ---------------------------------------------------------------------------

    def train(
        self,
        progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Concept:
        """Run (or resume) the loop to ``config.steps``; write and return the concept."""
        return train_loop(self, progress, should_stop)

    def concept(self) -> Concept:
        metadata = ConceptMetadata(base_model_hash=self.model.model_hash, steps=self.state.step)
        first, *second = (v.detach().cpu().float().clone() for v in self.vector_sets)
        if not second:
            return Concept(self.config.token, first, metadata)
        return Concept(self.config.token, first, metadata, ConceptFormat.SDXL, second[0])

    def write_concept(self) -> Concept:
        concept = self.concept()
        save_concept(concept, self.out / CONCEPT_FILE)
        return concept

    def validate(self) -> Path:
        """Render the validation prompt with the current vectors; write a PNG grid."""
        return write_validation_grid(self)


def _sets(vectors: torch.Tensor | VectorSets) -> VectorSets:
    return (vectors,) if isinstance(vectors, torch.Tensor) else tuple(vectors)
