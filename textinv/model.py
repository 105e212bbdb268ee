"""Loading a frozen Stable Diffusion 1.x/2.x or SDXL base model into one small typed bundle.

An SDXL model carries a second tokenizer and text encoder (``CLIPTextModelWithProjection``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from textinv.errors import ModelLoadError
from textinv.single_file import is_single_file, single_file_folder

SUPPORTED_PIPELINES = (
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionXLPipeline",
)
# The parts of a diffusers folder we load, and the file each needs at least.
REQUIRED_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
)
# SDXL's second tokenizer and text encoder are hashed where a folder has them.
COMPONENT_FOLDERS = (
    "tokenizer",
    "text_encoder",
    "unet",
    "vae",
    "scheduler",
    "tokenizer_2",
    "text_encoder_2",
)
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
    # SDXL: the second tokenizer and text encoder, and whether an empty negative prompt is zeros.
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    force_zeros_for_empty_prompt: bool = False

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        """Every module with weights: the text encoder(s), the UNet and the VAE."""
        second = () if self.text_encoder_2 is None else (self.text_encoder_2,)
        return (self.text_encoder, *second, self.unet, self.vae)

    @property
    def text_width(self) -> int:
        """D, the width of a token embedding and of the text encoder's output."""
        return int(self.text_encoder.config.hidden_size)

    @property
    def text_widths(self) -> tuple[int, ...]:
        """Each text encoder's width: (D,), or SDXL's (D1, D2)."""
        second = self.text_encoder_2
        return (self.text_width, *(() if second is None else (int(second.config.hidden_size),)))

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
        if self.is_sdxl:
            return "sdxl"
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
    sdxl = _pipeline_class(folder) == "StableDiffusionXLPipeline"
    model = BaseModel(
        path=folder,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype),
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
        scheduler_config=json.loads((folder / "scheduler/scheduler_config.json").read_text()),
        model_hash=model_hash(folder),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2") if sdxl else None,
        text_encoder_2=(
            CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", dtype=dtype)
            if sdxl
            else None
        ),
        force_zeros_for_empty_prompt=forces_zeros_for_empty_prompt(folder),
    )
    for module in model.modules:
        module.requires_grad_(False)
        module.eval()
        module.to(device)
    return model


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
    parts = ["text_encoder", "unet", "vae"]
    indexed = (folder / "model_index.json").is_file()
    sdxl = indexed and _pipeline_class(folder) == "StableDiffusionXLPipeline"
    if (folder / "text_encoder_2").exists() or sdxl:
        parts.append("text_encoder_2")
        if not (folder / "tokenizer_2").is_dir():
            missing.append("tokenizer_2/")
    missing += [f"{part}/ weights" for part in parts if not _weights(folder / part)]
    if missing:
        raise ModelLoadError(
            f"model folder {str(folder)!r} is incomplete: missing {', '.join(missing)}"
        )
    kind = _pipeline_class(folder)
    if kind not in SUPPORTED_PIPELINES:
        raise ModelLoadError(
            f"model folder {str(folder)!r} holds a {kind!r}; supported kinds are "
            f"{', '.join(SUPPORTED_PIPELINES)} (Stable Diffusion 1.x, 2.x and SDXL)"
        )


def _weights(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin")]


def forces_zeros_for_empty_prompt(folder: Path) -> bool:
    """SDXL's ``force_zeros_for_empty_prompt`` from the folder's ``model_index.json``."""
    return bool(_model_index(folder).get("force_zeros_for_empty_prompt"))


def _model_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(
            f"model folder {str(folder)!r} has an unreadable model_index.json: {error}"
        ) from error
    return index if isinstance(index, dict) else {}


def _pipeline_class(folder: Path) -> str:
    return str(_model_index(folder).get("_class_name", "unknown"))


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
