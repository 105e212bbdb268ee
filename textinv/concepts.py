"""Concepts and their file formats (DESIGN decision 6: concept files are data, never code).

A concept is a placeholder token (``<cat-toy>``) with K ≥ 1 vectors of the text encoder's width.
We write the diffusers format (``{token: float32[K, D]}`` in safetensors, our metadata in the
header), Automatic1111's, or SDXL's (``clip_l`` + ``clip_g``, the token as ``name``). We read
those and kohya's (``emb_params``), from safetensors or from ``.pt`` through
``torch.load(weights_only=True)``, which cannot run pickled code. A file that carries no token
(kohya, a bare tensor, a file without ``name``) is named after its stem, as Automatic1111 does.

Every file is an upload, bounded before the expensive work (``textinv.concept_io``): its size,
then each tensor's storage, rows (K ≤ ``max_vectors``) and width (the model's), all before one
element is copied; then dtype and finite values.
"""

from __future__ import annotations

import io
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors_bytes

from textinv.concept_io import (
    StoredTensor,
    check_tensor_storage,
    looks_like_safetensors,
    read_pickle,
    read_safetensors,
)
from textinv.concept_tokens import MAX_TOKEN_LENGTH as MAX_TOKEN_LENGTH
from textinv.concept_tokens import MAX_VECTORS, check_token
from textinv.concept_tokens import normalize_token as normalize_token
from textinv.errors import ConceptFileError, InvalidInputError, quote
from textinv.fileio import atomic_write_bytes
from textinv_client.choices import Choice

FORMAT_VERSION = 1
# D: the widest text encoder a concept may be for when the caller names no width (T5-XXL: 4096).
MAX_WIDTH = 4096
# A concept file is a few kilobytes (16 × 4096 float32 rows are 256 KiB).
DEFAULT_MAX_FILE_BYTES = 8 << 20
MAX_METADATA_CHARS = 256
_HEADER_PREFIX = "textinv."
_HEADER_INT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() accepts '²'


class ConceptFormat(Choice):
    """The layouts of a concept file that we read; we write the first two."""

    __choice_name__ = "concept format"

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
    def from_header(
        cls, header: Mapping[str, str], source: str = "concept file"
    ) -> ConceptMetadata:
        """Our fields of a safetensors header; a malformed one raises, naming it."""
        steps = _header_int(header, "steps", source)
        version = _header_int(header, "format_version", source)
        return cls(
            base_model_hash=_header_text(header, "base_model_hash", source),
            steps=steps,
            created_at=_header_text(header, "created_at", source) or "",
            format_version=0 if version is None else version,
        )


def _header_text(header: Mapping[str, str], key: str, source: str) -> str | None:
    value = header.get(_HEADER_PREFIX + key)
    if value is not None and (not isinstance(value, str) or len(value) > MAX_METADATA_CHARS):
        raise ConceptFileError(
            f"{source}: metadata {_HEADER_PREFIX + key} must be text of at most "
            f"{MAX_METADATA_CHARS} characters, got {quote(value)}"
        )
    return value


def _header_int(header: Mapping[str, str], key: str, source: str) -> int | None:
    value = _header_text(header, key, source)
    if value is None or value == "":
        return None
    if not _HEADER_INT.fullmatch(value):
        raise ConceptFileError(
            f"{source}: metadata {_HEADER_PREFIX + key} must be a whole number, got {quote(value)}"
        )
    return int(value)


@dataclass(frozen=True)
class Concept:
    """A learned word: ``token`` and its ``vectors`` [K, D] (float32, on the CPU)."""

    token: str
    vectors: torch.Tensor
    metadata: ConceptMetadata = field(default_factory=ConceptMetadata)
    source_format: ConceptFormat = ConceptFormat.DIFFUSERS
    # SDXL's second text encoder (clip_g) [K, D2]
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
        return replace(self, token=check_token(token))


# ---------------------------------------------------------------------------------------------
# Validation


def check_vectors(
    vectors: Any,
    source: str,
    expected_width: int | None = None,
    max_vectors: int = MAX_VECTORS,
) -> torch.Tensor:
    """Return ``vectors`` as float32 [K, D], or raise naming ``source`` and what is wrong.

    Shape and storage are checked first, from metadata alone; only then are the (at most
    ``max_vectors`` × D) elements copied, converted and checked for NaN, infinity and zero rows.
    """
    # 1. Storage and shape, before anything is copied.
    if isinstance(vectors, torch.Tensor):
        check_tensor_storage(vectors, source)
        _check_shape(tuple(vectors.shape), source, expected_width, max_vectors)
    elif isinstance(vectors, StoredTensor):
        _check_shape(vectors.shape, source, expected_width, max_vectors)
        if vectors.dtype not in ("F32", "F16", "BF16", "F64"):
            raise ConceptFileError(f"{source}: vectors must be floating point, got {vectors.dtype}")
        vectors = vectors.read()
    else:
        raise ConceptFileError(
            f"{source}: expected a tensor of vectors, got {type(vectors).__name__}"
        )
    # 2. The bounded copy [K, D] float32, and its values.
    vectors = vectors.detach().to("cpu", torch.float32).reshape(-1, vectors.shape[-1]).clone()
    if not torch.isfinite(vectors).all():
        raise ConceptFileError(f"{source}: vectors hold non-finite values (NaN or infinity)")
    zero_rows = (vectors.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if zero_rows:
        raise ConceptFileError(f"{source}: vector(s) {zero_rows} are all zeros")
    return vectors


def _check_shape(
    shape: tuple[int, ...], source: str, expected_width: int | None, max_vectors: int
) -> None:
    """[K, D] (or a single vector saved as [D]) with 1 ≤ K ≤ max_vectors and the model's D."""
    if len(shape) not in (1, 2):
        raise ConceptFileError(f"{source}: vectors must be [K, D], got shape {list(shape[:8])}")
    rows, width = (1, shape[0]) if len(shape) == 1 else shape
    if rows == 0:
        raise ConceptFileError(f"{source}: the concept has zero vectors")
    if rows > max_vectors:
        raise ConceptFileError(f"{source}: {rows} vectors; the limit is {max_vectors} per concept")
    if expected_width is not None and width != expected_width:
        raise ConceptFileError(
            f"{source}: vectors have width {width} but the model's text encoder "
            f"takes {expected_width}"
        )
    if not 1 <= width <= MAX_WIDTH:
        raise ConceptFileError(f"{source}: vectors have width {width}; expected 1..{MAX_WIDTH}")


# ---------------------------------------------------------------------------------------------
# Reading


def load_concept(
    path: str | Path,
    *,
    expected_width: int | None = None,
    vocabulary: Collection[str] = (),
    token: str | None = None,
    max_vectors: int = MAX_VECTORS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    expected_width_2: int | None = None,
) -> Concept:
    """Read a concept file in any supported format; ``token`` renames it."""
    path = Path(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(max_bytes + 1)  # never more than the limit, whatever the size
    except OSError as error:
        raise ConceptFileError(f"{str(path)!r}: cannot read the file ({error.strerror})") from error
    return parse_concept(
        data,
        str(path),
        expected_width=expected_width,
        vocabulary=vocabulary,
        token=token,
        max_vectors=max_vectors,
        max_bytes=max_bytes,
        expected_width_2=expected_width_2,
    )


def parse_concept(
    data: bytes,
    source: str,
    *,
    expected_width: int | None = None,
    vocabulary: Collection[str] = (),
    token: str | None = None,
    max_vectors: int = MAX_VECTORS,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
    expected_width_2: int | None = None,
) -> Concept:
    """Read a concept from a file's bytes; ``source`` names the file in errors (and gives the
    token of a file that carries none: its stem). ``expected_width_2``: SDXL's clip_g width.
    """
    # 1. The size, then the container: nothing is read past a bound.
    if len(data) > max_bytes:
        raise ConceptFileError(f"{source}: the file is over the limit of {max_bytes} bytes")
    found = _read_found(data, source)
    # 2. Each tensor: storage, rows and width before the (bounded) copy.
    vectors = check_vectors(found.vectors, source, expected_width, max_vectors)
    vectors_2 = None
    if found.vectors_2 is not None:
        where = f"{source} (clip_g)"
        vectors_2 = check_vectors(found.vectors_2, where, expected_width_2, max_vectors)
        if vectors_2.shape[0] != vectors.shape[0]:
            raise ConceptFileError(
                f"{where}: {vectors_2.shape[0]} vectors, but clip_l has {vectors.shape[0]}"
            )
    # 3. The token: the caller's, the file's, or the file's stem; normalized and checked.
    name = token if token is not None else found.token
    try:
        checked = check_token(
            _stem_token(source) if name is None else name, vocabulary, len(vectors)
        )
    except InvalidInputError as error:
        hint = "" if name is not None else " (the file carries no token: its name gives one)"
        raise ConceptFileError(f"{source}: {error}{hint}") from error
    return Concept(checked, vectors, found.metadata, found.source_format, vectors_2)


@dataclass(frozen=True)
class _Found:
    """What a file holds, before its tensors are checked; ``token`` None: the file has none."""

    token: str | None
    vectors: Any  # a torch.Tensor (from a pickle) or a StoredTensor (safetensors, unread)
    metadata: ConceptMetadata
    source_format: ConceptFormat
    vectors_2: Any = None


def _read_found(data: bytes, source: str) -> _Found:
    if looks_like_safetensors(data):
        stored = read_safetensors(data, source)
        metadata = ConceptMetadata.from_header(stored.metadata, source)
        a1111_keys = [key for key in stored.tensors if key.startswith("string_to_param.")]
        if a1111_keys:
            name = stored.metadata.get("name") or None
            return _Found(name, stored.tensors[a1111_keys[0]], metadata, ConceptFormat.A1111)
        found = _found_in_state_dict(stored.tensors, source, metadata)
        if found.source_format is ConceptFormat.SDXL:  # ours carry the token in the header
            found = replace(found, token=stored.metadata.get("name") or None)
        return found
    state = read_pickle(data, source)
    if isinstance(state, torch.Tensor):
        return _Found(None, state, ConceptMetadata(created_at=""), ConceptFormat.DIFFUSERS)
    if not isinstance(state, dict):
        raise ConceptFileError(f"{source}: expected a dict of tensors, got {type(state).__name__}")
    if "string_to_param" in state:
        return _a1111_found(state, source)
    return _found_in_state_dict(state, source, ConceptMetadata(created_at=""))


def _stem_token(source: str) -> str:
    """Automatic1111 names a concept without a ``name`` after its file."""
    return Path(source).stem


def _a1111_found(state: dict[str, Any], source: str) -> _Found:
    params = state["string_to_param"]
    if not isinstance(params, dict) or not params:
        raise ConceptFileError(f"{source}: 'string_to_param' holds no vectors")
    vectors = params.get("*", next(iter(params.values())))
    name, step, checkpoint = state.get("name"), state.get("step"), state.get("sd_checkpoint")
    metadata = ConceptMetadata(
        base_model_hash=checkpoint
        if isinstance(checkpoint, str) and len(checkpoint) <= MAX_METADATA_CHARS
        else None,
        steps=step if isinstance(step, int) and 0 <= step < 2**63 else None,
        created_at="",
    )
    return _Found(name if isinstance(name, str) else None, vectors, metadata, ConceptFormat.A1111)


def _found_in_state_dict(
    state: Mapping[Any, Any], source: str, metadata: ConceptMetadata
) -> _Found:
    if "emb_params" in state:
        return _Found(None, state["emb_params"], metadata, ConceptFormat.KOHYA)
    if "clip_l" in state and "clip_g" in state:
        return _Found(None, state["clip_l"], metadata, ConceptFormat.SDXL, state["clip_g"])
    if len(state) == 1:
        token, vectors = next(iter(state.items()))
        if not isinstance(token, str):
            raise ConceptFileError(f"{source}: the token must be text, got {quote(token)}")
        return _Found(token, vectors, metadata, ConceptFormat.DIFFUSERS)
    keys = ", ".join(quote(key, 20) for key in list(state)[:8])
    raise ConceptFileError(
        f"{source}: not a known concept format (keys: {keys}); expected one token → vectors "
        "(diffusers), 'string_to_param' (Automatic1111), 'emb_params' (kohya) or 'clip_l' + "
        "'clip_g' (SDXL)"
    )


# ---------------------------------------------------------------------------------------------
# Writing


def concept_to_bytes(
    concept: Concept, fmt: ConceptFormat | None = None, *, pickle: bool = False
) -> bytes:
    """Serialize ``concept``: safetensors, or a ``.pt`` pickle for Automatic1111 with ``pickle``.
    Without ``fmt``: SDXL's layout for a concept with clip_g vectors, else diffusers'."""
    fmt = fmt or (ConceptFormat.DIFFUSERS if concept.vectors_2 is None else ConceptFormat.SDXL)
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
    if fmt is ConceptFormat.SDXL:  # kohya's and Automatic1111's SDXL layout
        if concept.vectors_2 is None:
            raise InvalidInputError(f"{concept.token} has no clip_g vectors: not an SDXL concept")
        tensors = {"clip_l": vectors, "clip_g": concept.vectors_2.detach().float().contiguous()}
        return save_safetensors_bytes(tensors, metadata={**header, "name": concept.token})
    raise InvalidInputError(f"cannot write format {fmt.value!r}; write diffusers, a1111 or sdxl")


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


def save_concept(concept: Concept, path: str | Path, fmt: ConceptFormat | None = None) -> Path:
    """Write ``concept`` atomically; a ``.pt`` path with ``a1111`` writes a pickle of tensors."""
    path = Path(path)
    data = concept_to_bytes(concept, fmt, pickle=path.suffix in (".pt", ".bin"))
    return atomic_write_bytes(path, data)
