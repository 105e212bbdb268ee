"""Concepts and their file formats (DESIGN decision 6: concept files are data, never code).

A concept is a placeholder token (``<cat-toy>``) with K ≥ 1 vectors of the text encoder's width.
We write the diffusers format (``{token: float32[K, D]}`` in safetensors, our metadata in the
header) or Automatic1111's. We read diffusers, Automatic1111 (``string_to_param`` + ``name``),
kohya (``emb_params``) and SDXL (``clip_l`` + ``clip_g``) files, from safetensors or from ``.pt``
through ``torch.load(weights_only=True)``, which cannot run pickled code. Every file is checked
for shape, dtype and finite values before it is accepted.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from textinv.errors import ConceptFileError, InvalidInputError
from textinv.fileio import atomic_write_bytes

FORMAT_VERSION = 1
MAX_TOKEN_LENGTH = 64
# Every vector takes one of the 75 prompt positions between the start and end tokens.
MAX_VECTORS = 75
_HEADER_PREFIX = "textinv."
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ConceptFormat(str, Enum):
    DIFFUSERS = "diffusers"
    A1111 = "a1111"
    KOHYA = "kohya"
    SDXL = "sdxl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ConceptMetadata:
    """What we know about where a concept came from. Unknown fields stay ``None``."""

    base_model_hash: str | None = None
    steps: int | None = None
    created_at: str = field(default_factory=utc_now)
    format_version: int = FORMAT_VERSION

    def to_header(self) -> dict[str, str]:
        """As safetensors header metadata (a flat str → str map)."""
        values = {
            "format_version": str(self.format_version),
            "base_model_hash": self.base_model_hash,
            "steps": None if self.steps is None else str(self.steps),
            "created_at": self.created_at,
        }
        return {_HEADER_PREFIX + key: value for key, value in values.items() if value is not None}

    @classmethod
    def from_header(cls, header: Mapping[str, str]) -> ConceptMetadata:
        def get(key: str) -> str | None:
            return header.get(_HEADER_PREFIX + key)

        steps, version = get("steps"), get("format_version")
        return cls(
            base_model_hash=get("base_model_hash"),
            steps=int(steps) if steps and steps.isdigit() else None,
            created_at=get("created_at") or "",
            format_version=int(version) if version and version.isdigit() else 0,
        )


@dataclass(frozen=True)
class Concept:
    """A learned word: ``token`` and its ``vectors`` [K, D] (float32, on the CPU)."""

    token: str
    vectors: torch.Tensor
    metadata: ConceptMetadata = field(default_factory=ConceptMetadata)
    source_format: ConceptFormat = ConceptFormat.DIFFUSERS
    # SDXL's second text encoder (clip_g) [K, D2]; kept, though generation is SD 1.x/2.x for now.
    vectors_2: torch.Tensor | None = None

    @property
    def num_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    def expanded_tokens(self) -> list[str]:
        """The per-vector names diffusers uses: ``<tok>``, ``<tok>_1``, ..., ``<tok>_{K-1}``."""
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.num_vectors)]

    def renamed(self, token: str) -> Concept:
        check_token(token)
        return replace(self, token=token)


# ---------------------------------------------------------------------------------------------
# Validation


def check_token(token: str, vocabulary: Collection[str] = (), num_vectors: int = 1) -> None:
    """A token is 1-64 characters without whitespace, and none of its names is in the vocabulary."""
    if not isinstance(token, str) or not 1 <= len(token) <= MAX_TOKEN_LENGTH:
        raise InvalidInputError(f"token {token!r} must be 1 to {MAX_TOKEN_LENGTH} characters long")
    if re.search(r"\s", token):
        raise InvalidInputError(f"token {token!r} must not contain whitespace")
    names = [token] + [f"{token}_{i}" for i in range(1, num_vectors)]
    taken = [name for name in names if name in vocabulary or f"{name}</w>" in vocabulary]
    if taken:
        raise InvalidInputError(
            f"token {token!r} collides with the tokenizer's vocabulary ({', '.join(taken)}); "
            "choose a new word such as '<my-concept>'"
        )


def check_vectors(vectors: Any, source: str, expected_width: int | None = None) -> torch.Tensor:
    """Return ``vectors`` as float32 [K, D], or raise naming ``source`` and what is wrong."""
    if not isinstance(vectors, torch.Tensor):
        raise ConceptFileError(
            f"{source}: expected a tensor of vectors, got {type(vectors).__name__}"
        )
    if vectors.dtype not in _FLOAT_DTYPES:
        raise ConceptFileError(f"{source}: vectors must be floating point, got {vectors.dtype}")
    if vectors.ndim == 1:
        vectors = vectors[None]  # a single vector saved as [D]
    if vectors.ndim != 2:
        raise ConceptFileError(f"{source}: vectors must be [K, D], got shape {list(vectors.shape)}")
    if vectors.shape[0] == 0:
        raise ConceptFileError(f"{source}: the concept has zero vectors")
    if vectors.shape[0] > MAX_VECTORS:
        raise ConceptFileError(
            f"{source}: {vectors.shape[0]} vectors do not fit a 77-token prompt "
            f"(at most {MAX_VECTORS})"
        )
    if expected_width is not None and vectors.shape[1] != expected_width:
        raise ConceptFileError(
            f"{source}: vectors have width {vectors.shape[1]} but the model's text encoder "
            f"takes {expected_width}"
        )
    vectors = vectors.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(vectors).all():
        raise ConceptFileError(f"{source}: vectors hold non-finite values (NaN or infinity)")
    zero_rows = (vectors.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if zero_rows:
        raise ConceptFileError(f"{source}: vector(s) {zero_rows} are all zeros")
    return vectors


# ---------------------------------------------------------------------------------------------
# Reading


def load_concept(
    path: str | Path,
    *,
    expected_width: int | None = None,
    vocabulary: Collection[str] = (),
    token: str | None = None,
) -> Concept:
    """Read a concept file in any supported format; ``token`` renames it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConceptFileError(f"{str(path)!r}: cannot read the file ({error.strerror})") from error
    return parse_concept(
        data, str(path), expected_width=expected_width, vocabulary=vocabulary, token=token
    )


def parse_concept(
    data: bytes,
    source: str,
    *,
    expected_width: int | None = None,
    vocabulary: Collection[str] = (),
    token: str | None = None,
) -> Concept:
    """Read a concept from a file's bytes; ``source`` names the file in errors."""
    if _looks_like_safetensors(data):
        tensors, header = _read_safetensors(data, source)
        concept = _concept_from_safetensors(tensors, header, source)
    else:
        concept = _concept_from_pickle(_read_pickle(data, source), source)
    if token is not None:
        concept = replace(concept, token=token)
    concept = replace(
        concept,
        vectors=check_vectors(concept.vectors, source, expected_width),
        vectors_2=None
        if concept.vectors_2 is None
        else check_vectors(concept.vectors_2, f"{source} (clip_g)"),
    )
    try:
        check_token(concept.token, vocabulary, concept.num_vectors)
    except InvalidInputError as error:
        raise ConceptFileError(f"{source}: {error}") from error
    return concept


def _looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON object."""
    if len(data) < 10:
        return False
    (length,) = struct.unpack("<Q", data[:8])
    return 2 <= length <= len(data) - 8 and data[8:9] == b"{"


def _read_safetensors(data: bytes, source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors raises its own and JSON errors alike
        raise ConceptFileError(f"{source}: not a readable safetensors file ({error})") from error
    return tensors, {str(k): str(v) for k, v in header.items()}


def _read_pickle(data: bytes, source: str) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, never code."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise ConceptFileError(
            f"{source}: not a readable concept file (safetensors, or a .pt holding only "
            f"tensors): {first_line}"
        ) from error


def _stem_token(source: str) -> str:
    """Automatic1111 names a concept without a ``name`` after its file."""
    return Path(source).stem


def _concept_from_safetensors(
    tensors: dict[str, torch.Tensor], header: dict[str, str], source: str
) -> Concept:
    metadata = ConceptMetadata.from_header(header)
    a1111_keys = [key for key in tensors if key.startswith("string_to_param.")]
    if a1111_keys:
        name = header.get("name") or _stem_token(source)
        return Concept(name, tensors[a1111_keys[0]], metadata, ConceptFormat.A1111)
    return _concept_from_state_dict(tensors, source, metadata)


def _concept_from_pickle(state: Any, source: str) -> Concept:
    if isinstance(state, torch.Tensor):
        return Concept(_stem_token(source), state, ConceptMetadata(created_at=""))
    if not isinstance(state, dict):
        raise ConceptFileError(f"{source}: expected a dict of tensors, got {type(state).__name__}")
    if "string_to_param" in state:
        return _a1111_concept(state, source)
    return _concept_from_state_dict(state, source, ConceptMetadata(created_at=""))


def _a1111_concept(state: dict[str, Any], source: str) -> Concept:
    params = state["string_to_param"]
    if not isinstance(params, dict) or not params:
        raise ConceptFileError(f"{source}: 'string_to_param' holds no vectors")
    vectors = params.get("*", next(iter(params.values())))
    name = state.get("name") if isinstance(state.get("name"), str) else _stem_token(source)
    step = state.get("step")
    metadata = ConceptMetadata(
        base_model_hash=state.get("sd_checkpoint")
        if isinstance(state.get("sd_checkpoint"), str)
        else None,
        steps=step if isinstance(step, int) else None,
        created_at="",
    )
    return Concept(str(name), vectors, metadata, ConceptFormat.A1111)


def _concept_from_state_dict(
    state: Mapping[str, Any], source: str, metadata: ConceptMetadata
) -> Concept:
    if "emb_params" in state:
        return Concept(_stem_token(source), state["emb_params"], metadata, ConceptFormat.KOHYA)
    if "clip_l" in state and "clip_g" in state:
        return Concept(
            _stem_token(source), state["clip_l"], metadata, ConceptFormat.SDXL, state["clip_g"]
        )
    if len(state) == 1:
        token, vectors = next(iter(state.items()))
        return Concept(str(token), vectors, metadata, ConceptFormat.DIFFUSERS)
    keys = ", ".join(repr(key) for key in list(state)[:8])
    raise ConceptFileError(
        f"{source}: not a known concept format (keys: {keys}); expected one token → vectors "
        "(diffusers), 'string_to_param' (Automatic1111), 'emb_params' (kohya) or 'clip_l' + "
        "'clip_g' (SDXL)"
    )


# ---------------------------------------------------------------------------------------------
# Writing


def concept_to_bytes(
    concept: Concept, fmt: ConceptFormat = ConceptFormat.DIFFUSERS, *, pickle: bool = False
) -> bytes:
    """Serialize ``concept``: safetensors, or a ``.pt`` pickle for Automatic1111 with ``pickle``."""
    vectors = concept.vectors.detach().to("cpu", torch.float32).contiguous()
    header = concept.metadata.to_header()
    if fmt is ConceptFormat.DIFFUSERS:
        return save_safetensors_bytes({concept.token: vectors}, metadata=header)
    if fmt is ConceptFormat.A1111:
        if pickle:
            return _a1111_pickle(concept, vectors)
        return save_safetensors_bytes(
            {"string_to_param.*": vectors}, metadata={**header, "name": concept.token}
        )
    raise InvalidInputError(f"cannot write format {fmt.value!r}; write 'diffusers' or 'a1111'")


def _a1111_pickle(concept: Concept, vectors: torch.Tensor) -> bytes:
    state = {
        "string_to_token": {"*": 265},  # the id of '*' in CLIP's vocabulary, as A1111 writes it
        "string_to_param": {"*": vectors},
        "name": concept.token,
        "step": concept.metadata.steps or 0,
        "sd_checkpoint": concept.metadata.base_model_hash,
        "sd_checkpoint_name": None,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_concept(
    concept: Concept, path: str | Path, fmt: ConceptFormat = ConceptFormat.DIFFUSERS
) -> Path:
    """Write ``concept`` atomically; a ``.pt`` path with ``a1111`` writes a pickle of tensors."""
    path = Path(path)
    data = concept_to_bytes(concept, fmt, pickle=path.suffix in (".pt", ".bin"))
    return atomic_write_bytes(path, data)
