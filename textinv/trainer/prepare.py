"""``prepare``: every check and every one-off cost of a run, before any training step.

The one-off costs are loading the model, tokenizing the prompt templates once per image and
encoding the VAE latents of every image and augmentation variant once (DESIGN decision 3).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from textinv.concepts import check_token
from textinv.data import AugmentationSpec, TrainingImage, encode_latent_cache, load_training_images
from textinv.dtypes import torch_dtype
from textinv.errors import InvalidInputError
from textinv.hardware import log_precision, resolve_model_precision
from textinv.model import BaseModel, load_base_model
from textinv.templates import fill_template, templates_for
from textinv.trainer.batches import EncoderPrompts, TrainingData
from textinv.trainer.config import InitMethod, InvertConfig, check_config, check_output_folder
from textinv.trainer.loss import noise_schedule
from textinv.trainer.run import Prepared, Trainer
from textinv.trainer.text import TrainingText, VectorSets
from textinv_client.choices import Precision


def prepare(config: InvertConfig, model: BaseModel | None = None) -> Trainer:
    """Every check and every one-off cost (model, images, latent cache), before any training."""
    # 1. The settings and the output folder, before anything is loaded.
    check_config(config)
    check_output_folder(config)
    # 2. The images, then the model (or the caller's, on its own device).
    images = load_training_images(config.images, config.max_images)
    device = resolve_device(config.device)
    if model is None:
        model = load_model_for(config, device)
    else:
        device = model.unet.device  # the caller's model, in its own precision (autocast if not)
    precision = resolve_model_precision(config.precision, model.unet)
    log_precision(precision, "the frozen model")
    # 3. What depends on the model: the token, the initializer, the resolution, the schedule.
    text = TrainingText(model, trace=config.trace)
    for encoder in text.encoders:  # SDXL: both vocabularies
        check_token(config.token, encoder.tokenizer.get_vocab(), config.vectors)
    init_ids = initializer_ids(model.tokenizer, config.init)
    resolution = _resolution(config, model)
    schedule = noise_schedule(model.scheduler_config)
    # 4. The prompts, tokenized once, and the latents, encoded once.
    prompts = _tokenize_prompts(config, text, images)
    started = time.perf_counter()
    cache = encode_latent_cache(
        images,
        model.vae,
        _augmentation(config, resolution),
        alpha_mask=config.alpha_mask,
        vae_scale_factor=model.vae_scale_factor,
    )
    prepared = Prepared(
        precision=precision.precision,
        resolution=resolution,
        init_ids=init_ids,
        init_vectors=_initial_vectors(config, text),
        text=text,
        schedule=schedule,
        data=TrainingData(prompts, cache, model.latent_scaling, schedule.num_train_timesteps),
        cache_seconds=time.perf_counter() - started,
    )
    return Trainer(config, model, device, prepared)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_model_for(config: InvertConfig, device: torch.device) -> BaseModel:
    """The frozen model on ``device`` in ``config.precision``; ``auto`` is resolved once the
    model's width is known (``resolve_model_precision``), so it loads in fp32 and is cast."""
    auto = config.precision is Precision.AUTO
    model = _load_model(config, device, torch.float32 if auto else frozen_dtype(config, device))
    if auto:
        dtype = frozen_dtype(config, device, model)
        for module in model.modules:
            module.to(dtype)
    return model


def frozen_dtype(
    config: InvertConfig, device: torch.device, model: BaseModel | None = None
) -> torch.dtype:
    """The dtype the frozen model's weights are held in: ``config.precision`` (``auto``
    resolved for ``model``), except fp16 on a CPU, which stays fp32 (its kernels are missing or
    slow there; the loss runs under autocast instead)."""
    precision = config.precision
    if model is not None:
        precision = resolve_model_precision(precision, model.unet).precision
    dtype = torch_dtype(precision)
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def _load_model(config: InvertConfig, device: torch.device, dtype: torch.dtype) -> BaseModel:
    from textinv.testing import SHAPE_MODELS, load_benchmark_model

    if config.model in SHAPE_MODELS:
        model = load_benchmark_model(config.model, dtype)
        for module in model.modules:
            module.to(device)
        return model  # type: ignore[no-any-return]
    return load_base_model(config.model, dtype=dtype, device=device)  # None: the embedded model


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


def _resolution(config: InvertConfig, model: BaseModel) -> int:
    resolution = config.resolution or model.default_resolution
    if resolution % model.vae_scale_factor:
        raise InvalidInputError(
            f"--resolution {resolution}: must be a multiple of the VAE's {model.vae_scale_factor}"
        )
    return resolution


def _initial_vectors(config: InvertConfig, text: TrainingText) -> VectorSets:
    """Per text encoder, the initializer's M rows spread over K vectors: from its token table,
    or with Cross Initialization from its output at the init tokens."""
    sets = []
    for index, encoder in enumerate(text.encoders):
        ids = initializer_ids(encoder.tokenizer, config.init)
        if config.init_method is not InitMethod.CROSS:
            sets.append(spread_initializer(encoder.table, ids, config.vectors))
            continue
        limit = int(encoder.tokenizer.model_max_length) - 2  # the sequence's <bos> and <eos>
        if len(ids) > limit:
            raise InvalidInputError(
                f"--init: with --init-method cross the init text must fit in {limit} tokens "
                f"(one pass of the text encoder), got {len(ids)}"
            )
        rows = text.final_states(index, ids)  # [M, D]
        sets.append(spread_initializer(rows, range(len(ids)), config.vectors))
    return tuple(sets)


def _tokenize_prompts(
    config: InvertConfig, text: TrainingText, images: Sequence[TrainingImage]
) -> list[list[EncoderPrompts]]:
    """Per image: its caption, or else every template of the property, tokenized once."""
    templates = templates_for(config.learnable_property)
    prompts = []
    for image in images:
        texts = [image.caption] if image.caption else list(templates)
        token, k = config.token, config.vectors
        prompts.append([text.tokenize(fill_template(t, token), token, k) for t in texts])
    return prompts


def _augmentation(config: InvertConfig, resolution: int) -> AugmentationSpec:
    return AugmentationSpec(
        resolution=resolution,
        crop=config.crop,
        crop_scale=config.crop_scale,
        num_crops=config.num_crops,
        flip=config.flip,
        seed=config.seed,
    )
