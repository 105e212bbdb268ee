"""Loading a frozen Stable Diffusion 1.x/2.x base model into one small typed bundle."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from textinv.errors import ModelLoadError
from textinv.single_file import is_single_file, single_file_folder

SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
# The parts of a diffusers folder we load, and the file each needs at least.
REQUIRED_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
)
COMPONENT_FOLDERS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


@dataclass(frozen=True)
class BaseModel:
    """A frozen SD 1.x/2.x model: every module in eval mode with gradients off."""

    path: Path
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_config: dict[str, Any]
    model_hash: str

    @property
    def text_width(self) -> int:
        """D, the width of a token embedding and of the text encoder's output."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def token_embedding(self) -> torch.Tensor:
        """The base vocabulary's embedding table, [V, D]."""
        table = self.text_encoder.get_input_embeddings().weight
        assert isinstance(table, torch.Tensor)
        return table

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along each side (8 for every SD model)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        """The factor that maps VAE latents to the UNet's unit-variance space."""
        return float(self.vae.config.scaling_factor)

    @property
    def family(self) -> str:
        return text_encoder_family(self.text_encoder.config.hidden_act)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts: ``epsilon`` (SD 1.x) or ``v_prediction`` (SD 2.x 768)."""
        return str(self.scheduler_config.get("prediction_type", "epsilon"))

    @property
    def default_resolution(self) -> int:
        """The image side the UNet was trained at, in pixels."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor


def load_base_model(
    name_or_path: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> BaseModel:
    """Load a diffusers-layout SD model from a local folder, or a hub id where a network exists.

    ``None`` loads the embedded shapes-world model (``textinv.toy``).
    """
    folder = resolve_model_folder(name_or_path)
    check_model_folder(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    scheduler_config = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    return BaseModel(
        path=folder,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        model_hash=model_hash(folder),
    )


def resolve_model_folder(name_or_path: str | Path | None) -> Path:
    """A local folder as it is; a single ``.safetensors`` checkpoint as the folder converted from
    it (``textinv.single_file``); a hub id (``org/name``) through the hub's local cache;
    ``None``: the embedded model, which every command uses when no ``--model`` is given."""
    if name_or_path is None:
        from textinv.toy import default_model_path

        return default_model_path()
    path = Path(name_or_path).expanduser()
    if is_single_file(path):
        return single_file_folder(path)
    if path.exists() or str(name_or_path).startswith((".", "/", "~")):
        return path
    if str(name_or_path).count("/") != 1:
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    return _download_from_hub(str(name_or_path))


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["model_index.json", *(f"{part}/*" for part in COMPONENT_FOLDERS)]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # the hub client raises many unrelated types
        raise ModelLoadError(
            f"model {repo_id!r} is not a local folder and could not be fetched from the hub: "
            f"{error}"
        ) from error


def check_model_folder(folder: Path) -> None:
    """Raise one ``ModelLoadError`` naming the folder and everything missing or unsupported."""
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {str(folder)!r} does not exist or is not a folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not any(
        all((folder / "tokenizer" / f).is_file() for f in group) for group in TOKENIZER_FILES
    ):
        missing.append("tokenizer/vocab.json + tokenizer/merges.txt (or tokenizer/tokenizer.json)")
    missing += [
        f"{part}/ weights"
        for part in ("text_encoder", "unet", "vae")
        if not _weights(folder / part)
    ]
    if missing:
        raise ModelLoadError(
            f"model folder {str(folder)!r} is incomplete: missing {', '.join(missing)}"
        )
    kind = _pipeline_class(folder)
    if kind not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"model folder {str(folder)!r} holds a {kind!r}; supported kinds are "
            f"{', '.join(SUPPORTED_PIPELINES)} (Stable Diffusion 1.x and 2.x)"
        )


def _weights(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]


def _pipeline_class(folder: Path) -> str:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"model folder {str(folder)!r} has an unreadable model_index.json: {error}"
        ) from error
    return str(index.get("_class_name", "unknown")) if isinstance(index, dict) else "unknown"


def model_hash(folder: Path) -> str:
    """A sha256 over the model's files (names and bytes): the model's identity for later stages.

    Cached per process by each file's size and modification time, so a 4 GB model is read once.
    """
    files = _hashed_files(folder)
    signature = tuple(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    )
    return _hash_files(folder, signature)


def _hashed_files(folder: Path) -> list[Path]:
    files = [folder / "model_index.json"]
    for part in COMPONENT_FOLDERS:
        if (folder / part).is_dir():
            files += sorted(
                p for p in (folder / part).rglob("*") if p.is_file() and not p.name.startswith(".")
            )
    return files


@functools.lru_cache(maxsize=16)
def _hash_files(folder: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(relative.encode() + b"\0")
        with open(folder / relative, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def text_encoder_family(hidden_act: str) -> str:
    """``sd2`` for OpenCLIP's text encoder (GELU), ``sd1`` for CLIP ViT-L's (quick GELU): the
    width cannot tell them apart (tiny test models, fine-tunes)."""
    return "sd2" if hidden_act == "gelu" else "sd1"
