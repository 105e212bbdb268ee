"""The reference method of ``textinv bench invert``: diffusers' ``textual_inversion.py`` (for
SDXL, ``textual_inversion_sdxl.py``), step for step (fp32 or its mixed precision, no accelerate,
no torchvision).

What makes it the reference, and slower than ours: the placeholder is added to the tokenizer (to
both, for SDXL), the *whole* token-embedding table [V, D] (both tables) trains under AdamW, the
original rows are copied back after every optimizer step, and every step loads its images from
disk, crops, resizes and flips them and runs the VAE encoder. SDXL's UNet gets the second
encoder's pooled ``text_embeds`` and ``time_ids`` of each image's original size, its crop's
corner and the target size.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from textinv.cli.bench.invert import INIT, TOKEN, InvertBenchSettings, StepTimes
from textinv.model import BaseModel
from textinv.templates import OBJECT_TEMPLATES


def train_reference(settings: InvertBenchSettings, model: BaseModel) -> StepTimes:
    """Set the method up (untimed per step), then time each of its optimizer steps."""
    started = time.perf_counter()
    method = ReferenceMethod(settings, model)
    setup = time.perf_counter() - started
    step_s, cpu_s = [], []
    for step in range(settings.warmup + settings.steps):
        step_started, cpu_started = time.perf_counter(), time.process_time()
        method.step(step)
        if method.device.type == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - step_started)
        cpu_s.append(time.process_time() - cpu_started)
    return StepTimes(step_s, cpu_s, setup)


class ReferenceMethod:
    """The example's ``main()``: its set-up in ``__init__``, one pass of its loop in ``step``."""

    def __init__(self, settings: InvertBenchSettings, model: BaseModel) -> None:
        from diffusers import DDPMScheduler

        assert settings.images is not None  # measure_invert always names the folder
        self.model, self.batch_size = model, settings.batch_size
        self.device = torch.device(settings.device)
        self.weight_dtype = model.unet.dtype  # the example's weight_dtype (see load_model)
        placeholders = [TOKEN] + [f"{TOKEN}_{i}" for i in range(1, settings.vectors)]
        self.encoders = text_encoders(model)
        self.placeholder_ids = [_add_placeholders(t, e, placeholders) for t, e in self.encoders]
        tables = [_train_only_the_embeddings(model, encoder) for _, encoder in self.encoders]
        self.noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
        self.optimizer = torch.optim.AdamW(
            [table.weight for table in tables],
            lr=2e-3,
            betas=(0.9, 0.999),
            weight_decay=1e-2,
            eps=1e-8,
        )
        self.orig_embeds_params = [table.weight.data.clone() for table in tables]  # [V, D] each
        self.examples = _ExampleLoader(
            [t for t, _ in self.encoders],
            Path(settings.images),
            " ".join(placeholders),
            settings.resolution,
        )
        torch.manual_seed(0)

    def step(self, step: int) -> None:
        items = [self.examples[step * self.batch_size + b] for b in range(self.batch_size)]
        pixel_values = torch.stack([item.pixels for item in items]).to(self.device)  # [B, 3, H, W]
        input_ids = [  # per tokenizer, [B, 77]
            torch.stack([item.input_ids[i] for item in items]).to(self.device)
            for i in range(len(self.encoders))
        ]
        time_ids = torch.stack([item.time_ids for item in items]).to(self.device)  # [B, 6]
        loss = self._loss(pixel_values, input_ids, time_ids)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        self._restore_original_rows()

    def _loss(
        self, pixel_values: torch.Tensor, input_ids: list[torch.Tensor], time_ids: torch.Tensor
    ) -> torch.Tensor:
        vae, unet, scheduler = self.model.vae, self.model.unet, self.noise_scheduler
        latents = vae.encode(pixel_values.to(self.weight_dtype)).latent_dist.sample().detach()
        latents = latents * vae.config.scaling_factor  # [B, 4, H/8, W/8]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        ).long()
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)
        # accelerate runs the prepared text encoder under autocast with mixed precision
        mixed = self.weight_dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.weight_dtype, enabled=mixed):
            hidden, added = self._encode(input_ids, time_ids)
        model_pred = unet(noisy_latents, timesteps, hidden, added_cond_kwargs=added).sample
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(latents, noise, timesteps)
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")

    def _encode(
        self, input_ids: list[torch.Tensor], time_ids: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """SD: the last hidden states [B, 77, D]. SDXL: both encoders' penultimate states,
        concatenated [B, 77, D1 + D2], with the pooled projection and the time ids."""
        if not self.model.is_sdxl:
            return self.model.text_encoder(input_ids[0])[0].to(self.weight_dtype), None
        (_, first), (_, second) = self.encoders
        states_1 = first(input_ids[0], output_hidden_states=True).hidden_states[-2]
        output_2 = second(input_ids[1], output_hidden_states=True)
        hidden = torch.cat([states_1, output_2.hidden_states[-2]], dim=-1)
        added = {"text_embeds": output_2[0], "time_ids": time_ids.to(self.weight_dtype)}
        return hidden.to(self.weight_dtype), added

    def _restore_original_rows(self) -> None:
        for (_, encoder), ids, original in zip(
            self.encoders, self.placeholder_ids, self.orig_embeds_params, strict=True
        ):
            # diffusers sizes this by len(tokenizer), which there equals the table's rows
            index_no_updates = torch.ones((original.shape[0],), dtype=torch.bool)
            index_no_updates[min(ids) : max(ids) + 1] = False
            with torch.no_grad():
                weight = encoder.get_input_embeddings().weight
                weight[index_no_updates] = original[index_no_updates]


def text_encoders(model: BaseModel) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs: one for SD, two for SDXL."""
    pairs: list[tuple[Any, Any]] = [(model.tokenizer, model.text_encoder)]
    if model.is_sdxl:
        pairs.append((model.tokenizer_2, model.text_encoder_2))
    return pairs


def _add_placeholders(tokenizer: Any, text_encoder: Any, placeholders: list[str]) -> list[int]:
    """New tokenizer entries, table rows to match, each a copy of the init word's row."""
    tokenizer.add_tokens(placeholders)
    init_id = tokenizer.encode(INIT, add_special_tokens=False)[0]
    placeholder_ids: list[int] = tokenizer.convert_tokens_to_ids(placeholders)
    if len(tokenizer) > text_encoder.get_input_embeddings().weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer))
    token_embeds = text_encoder.get_input_embeddings().weight.data
    with torch.no_grad():
        for token_id in placeholder_ids:
            token_embeds[token_id] = token_embeds[init_id].clone()
    return placeholder_ids


def _train_only_the_embeddings(model: BaseModel, encoder: Any) -> torch.nn.Embedding:
    """Everything frozen but ``encoder``'s whole token-embedding table, which trains."""
    model.vae.requires_grad_(False)
    model.unet.requires_grad_(False)
    encoder.requires_grad_(False)
    embeddings: torch.nn.Embedding = encoder.get_input_embeddings()
    embeddings.weight.requires_grad_(True)
    encoder.train()
    return embeddings


@dataclass(frozen=True)
class Example:
    pixels: torch.Tensor  # [3, size, size] in [-1, 1]
    input_ids: list[torch.Tensor]  # [77] per tokenizer
    time_ids: torch.Tensor  # [6]: original (h, w), crop corner (top, left), target (h, w)


class _ExampleLoader:
    """The example's ``TextualInversionDataset.__getitem__``: from disk, every time."""

    def __init__(self, tokenizers: list[Any], images: Path, placeholder: str, size: int) -> None:
        self.tokenizers = tokenizers
        self.paths = sorted(
            p for p in images.iterdir() if p.is_file() and p.suffix.lower() != ".txt"
        )
        self.placeholder, self.size = placeholder, size
        self.rng = random.Random(0)

    def __getitem__(self, index: int) -> Example:
        image: Image.Image = Image.open(self.paths[index % len(self.paths)])
        if image.mode != "RGB":
            image = image.convert("RGB")
        text = self.rng.choice(OBJECT_TEMPLATES).format(self.placeholder)
        input_ids = [
            tokenizer(
                text,
                padding="max_length",
                truncation=True,
                max_length=tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids[0]
            for tokenizer in self.tokenizers
        ]
        # SDXL's example: the image's size before resizing; its resized image is the crop.
        time_ids = torch.tensor([image.height, image.width, 0, 0, self.size, self.size])
        img = np.array(image).astype(np.uint8)
        crop = min(img.shape[0], img.shape[1])
        h, w = img.shape[0], img.shape[1]
        img = img[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
        size = self.size
        image = Image.fromarray(img).resize((size, size), resample=Image.Resampling.BICUBIC)
        if self.rng.random() < 0.5:  # transforms.RandomHorizontalFlip(p=0.5)
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return Example(torch.from_numpy(array).permute(2, 0, 1), input_ids, time_ids)
