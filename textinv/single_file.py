"""Single-file checkpoints: one ``.safetensors`` in the original (CompVis/LDM, SGM for SDXL) key
layout, as Automatic1111 and Civitai keep SD 1.x, SD 2.x and SDXL models, converted once into a
diffusers folder.

diffusers' ``from_single_file`` does the conversion, offline, with the architecture's configs and
tokenizer from a local diffusers-layout folder without weights (``--config DIR``, which reaches
every loader, and the processes a command starts, as ``TEXTINV_MODEL_CONFIG``), or from the
configs shipped for the common families (``textinv.families``: ``--config sd15``, ``sd21``,
``sd21-base``, ``sdxl-base``; without ``--config``, the family the file's keys show). The converted
folder is kept in the cache (``TEXTINV_CACHE_DIR``, default ``~/.cache/textinv``) under the
file's sha256 and the config's, so a server's next start finds it, and the model's identity hash,
computed over the converted files, follows the single file. Pickled ``.ckpt`` files are refused:
loading one can run code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open

from textinv.errors import ModelLoadError
from textinv.families import FAMILIES, write_config_folder

log = logging.getLogger(__name__)

MODEL_CONFIG_ENV = "TEXTINV_MODEL_CONFIG"
CACHE_ENV = "TEXTINV_CACHE_DIR"
SINGLE_FILE_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
)
SDXL_CONFIG_FILES = ("text_encoder_2/config.json",)  # and tokenizer_2/
# The key prefixes of each component in the original layout; SDXL's text encoders live under
# conditioner.embedders (0: CLIP ViT-L, 1: OpenCLIP bigG).
UNET_KEYS = "model.diffusion_model."
VAE_KEYS = "first_stage_model."
TEXT_KEYS = ("cond_stage_model.transformer.", "cond_stage_model.model.")
SDXL_KEYS = "conditioner.embedders."
SDXL_TEXT_KEYS = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
# The shipped family each layout implies: SD 2.x files are read as SD 2.1 at 768 px
# (v-prediction), as diffusers guesses them; ``--config sd21-base`` is the 512 px epsilon model.
SD1_FAMILY, SD2_FAMILY, SDXL_FAMILY = "sd15", "sd21", "sdxl-base"


def is_single_file(path: Path) -> bool:
    return path.suffix.lower() in (SINGLE_FILE_SUFFIX, *PICKLE_SUFFIXES) and not path.is_dir()


def single_file_folder(path: Path, config: Path | None = None) -> Path:
    """The diffusers folder converted from the checkpoint ``path``: from the cache when it was
    converted before with the same config, else converted now. ``ModelLoadError`` names the
    file and what is wrong with it."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name}: {path.suffix} checkpoints are Python pickles, and loading one can run "
            f"any code it holds; convert it to .safetensors with a tool you trust, then pass that"
        )
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {str(path)!r} does not exist or is not a file")
    family = check_checkpoint_keys(path)
    config = config_folder(config, path, family)
    target = cache_root() / "single-file" / f"{file_digest(path)[:32]}-{config_digest(config)[:12]}"
    if not (target / "model_index.json").is_file():
        convert(path, config, target, sdxl=family == SDXL_FAMILY)
    return target


def config_folder(config: Path | None, checkpoint: Path, family: str = SD1_FAMILY) -> Path:
    """The explicit config folder or shipped family name, else ``TEXTINV_MODEL_CONFIG``'s, else
    the shipped configs of ``family`` (the one the checkpoint's keys show). A folder is checked
    for every config (an SDXL checkpoint's: its second text encoder's and tokenizer too)."""
    chosen = config or (
        Path(os.environ[MODEL_CONFIG_ENV]) if os.environ.get(MODEL_CONFIG_ENV) else None
    )
    if chosen is None or is_shipped_name(chosen):
        name = str(chosen) if chosen is not None else family
        if chosen is None and family == SD2_FAMILY:
            log.warning(
                "%s: an SD 2.x checkpoint, read as SD 2.1 at 768 px (v-prediction); "
                "pass --config sd21-base for a 512 px epsilon model",
                checkpoint.name,
            )
        return shipped_config(name)
    sdxl = family == SDXL_FAMILY
    files = CONFIG_FILES + (SDXL_CONFIG_FILES if sdxl else ())
    missing = [name for name in files if not (chosen / name).is_file()]
    for tokenizer in ("tokenizer", "tokenizer_2") if sdxl else ("tokenizer",):
        if not (chosen / tokenizer).is_dir():
            missing.append(f"{tokenizer}/")
    if missing:
        raise ModelLoadError(f"config folder {str(chosen)!r} lacks {', '.join(missing)}")
    return chosen


def is_shipped_name(config: Path) -> bool:
    """Whether ``--config`` names a shipped family (``sd15``, ...) rather than a folder (a
    folder of that name wins)."""
    return str(config) in FAMILIES and not config.is_dir()


def check_checkpoint_keys(path: Path) -> str:
    """A readable safetensors file holding a UNet, a VAE and the text encoder(s) of SD 1.x/2.x
    or of SDXL (both); the shipped family its layout implies."""
    try:
        with safe_open(str(path), framework="pt") as weights:
            keys = list(weights.keys())
    except Exception as error:  # safetensors raises its own errors for a malformed header
        raise ModelLoadError(f"{path.name}: not a readable safetensors file ({error})") from error
    sdxl = any(key.startswith(SDXL_KEYS) for key in keys)
    texts: list[tuple[str, tuple[str, ...]]] = [("text encoder", TEXT_KEYS)]
    if sdxl:
        texts = [(f"text encoder {i + 1}", (prefix,)) for i, prefix in enumerate(SDXL_TEXT_KEYS)]
    parts = [("UNet", (UNET_KEYS,)), ("VAE", (VAE_KEYS,)), *texts]
    lacking = [name for name, prefixes in parts if not any(k.startswith(prefixes) for k in keys)]
    if lacking:
        expected = ", ".join(f"{prefixes[0]}*" for _, prefixes in parts)
        kind = "an SDXL" if sdxl else "a Stable Diffusion"
        raise ModelLoadError(
            f"{path.name}: not {kind} checkpoint in the original layout: no "
            f"{', '.join(lacking)} weights ({expected})"
        )
    if sdxl:
        return SDXL_FAMILY
    return SD1_FAMILY if any(key.startswith(TEXT_KEYS[0]) for key in keys) else SD2_FAMILY


def shipped_config(name: str) -> Path:
    """The config folder of the shipped family ``name``, written once into the cache (keyed by
    the family's configs, so a changed family writes anew; atomic, as ``convert``)."""
    family = FAMILIES[name]
    key = hashlib.sha256(json.dumps(family.__dict__, sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / "configs" / f"{name}-{key}"
    if (target / "model_index.json").is_file():
        return target
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    write_config_folder(family, partial)
    _publish(partial, target)
    return target


def _publish(partial: Path, target: Path) -> None:
    """Move the finished folder ``partial`` to ``target``; another process may have been first,
    and theirs is the same folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(partial, target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / "model_index.json").is_file():
            raise


def convert(path: Path, config: Path, target: Path, sdxl: bool = False) -> None:
    """Write the diffusers folder of ``path`` to ``target``, atomically (a crash leaves none)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    options: dict[str, Any] = {"config": str(config), "local_files_only": True}
    try:
        if sdxl:
            pipeline = StableDiffusionXLPipeline.from_single_file(str(path), **options)
        else:
            pipeline = StableDiffusionPipeline.from_single_file(
                str(path), safety_checker=None, requires_safety_checker=False, **options
            )
    except (SingleFileComponentError, ValueError, KeyError, RuntimeError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(
            f"{path.name}: cannot be converted with {config.name}'s configs ({reason})"
        ) from error
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    pipeline.save_pretrained(partial)
    _publish(partial, target)


def cache_root() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "textinv"


def file_digest(path: Path) -> str:
    """The file's sha256, read once per process for each size and modification time (the host
    and the backend both resolve the model)."""
    stat = path.stat()
    return _digest(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_digest(folder: Path) -> str:
    """A sha256 over the config and tokenizer files, so another config converts anew."""
    digest = hashlib.sha256()
    files = [folder / name for name in CONFIG_FILES + SDXL_CONFIG_FILES]
    files += sorted((folder / "tokenizer").glob("*")) + sorted((folder / "tokenizer_2").glob("*"))
    for file in files:
        if file.is_file():
            digest.update(str(file.relative_to(folder)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
