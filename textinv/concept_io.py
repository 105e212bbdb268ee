"""Reading the tensors of a concept file within bounds, before anything is copied.

A concept file is an upload: a few kilobytes may claim gigabytes. So nothing here allocates in
proportion to what a file *claims*, only to what it holds (and ``textinv.concepts`` checks every
tensor's shape against the model before one element is copied):

- safetensors: the 8-byte header length is checked against the file and ``MAX_HEADER_BYTES``
  before the header is read; duplicate keys, offsets outside the file and shapes whose element
  count disagrees with their byte range are refused. A tensor stays a ``StoredTensor`` (its
  dtype, shape and byte range) until its shape has been accepted.
- ``.pt``/``.bin``: only torch's zip format, every member stored uncompressed (``torch.save``
  writes no other; a deflated member would be a zip bomb), read with ``weights_only=True``
  (no pickled code runs). The pre-1.6 legacy format is refused: it allocates each storage at the
  size its pickle claims. The tensors it yields are checked by ``check_tensor_storage``.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np
import torch

from textinv.errors import ConceptFileError, quote

# A concept's header lists one or two tensors and a few metadata strings: 1 MiB is generous.
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 64
MAX_NDIM = 8
_ZIP_MAGIC = b"PK\x03\x04"
_METADATA_KEY = "__metadata__"
# safetensors dtype → bytes per element, for every dtype the format defines.
_ITEM_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
# The floating dtypes a concept's vectors may have: (numpy dtype of the raw bytes, torch view).
_FLOAT_READERS: dict[str, tuple[str, torch.dtype | None]] = {
    "F32": ("<f4", None),
    "F16": ("<f2", None),
    "F64": ("<f8", None),
    "BF16": ("<u2", torch.bfloat16),  # numpy has no bfloat16: read the bits, view them in torch
}
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, not yet read: its dtype, shape and byte range."""

    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute offsets into the file's bytes
    end: int
    data: bytes

    def read(self) -> torch.Tensor:
        """Copy the tensor out (float dtypes only; call after its shape has been accepted)."""
        if self.dtype not in _FLOAT_READERS:
            raise ValueError(f"not a floating dtype: {self.dtype}")
        raw, view = _FLOAT_READERS[self.dtype]
        count = math.prod(self.shape)
        array = np.frombuffer(self.data, dtype=raw, count=count, offset=self.begin).copy()
        tensor = torch.from_numpy(array)
        return (tensor.view(view) if view is not None else tensor).reshape(self.shape)


@dataclass(frozen=True)
class SafetensorsFile:
    tensors: dict[str, StoredTensor]
    metadata: dict[str, str]


def looks_like_safetensors(data: bytes) -> bool:
    """An 8-byte little-endian header length, then a JSON object (``{``)."""
    return len(data) >= 10 and data[8:9] == b"{"


def read_safetensors(data: bytes, source: str) -> SafetensorsFile:
    """The header of a safetensors file, checked against the file; no tensor is read."""
    # 1. The header length, bounded before the header is read.
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(MAX_HEADER_BYTES, len(data) - 8):
        raise ConceptFileError(
            f"{source}: the safetensors header claims {length} bytes; the file holds "
            f"{len(data) - 8} after the length and the limit is {MAX_HEADER_BYTES}"
        )
    # 2. The JSON, with duplicate keys refused (json would keep the last one silently).
    header = _parse_header_json(data[8 : 8 + length], source)
    # 3. Every entry checked against the data section.
    start = 8 + length
    metadata = _read_metadata(header.pop(_METADATA_KEY, {}), source)
    if len(header) > MAX_TENSORS:
        raise ConceptFileError(f"{source}: {len(header)} tensors; a concept file holds a few")
    tensors = {
        name: _stored_tensor(name, entry, data, start, source) for name, entry in header.items()
    }
    return SafetensorsFile(tensors, metadata)


def _parse_header_json(text: bytes, source: str) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConceptFileError(f"{source}: the safetensors header repeats key {quote(key)}")
            result[key] = value
        return result

    try:
        header = json.loads(text, object_pairs_hook=no_duplicates)
    except ConceptFileError:
        raise
    except (ValueError, RecursionError) as error:  # JSON, UTF-8, a 5000-digit integer
        raise ConceptFileError(
            f"{source}: the safetensors header is not valid JSON ({type(error).__name__})"
        ) from error
    if not isinstance(header, dict):
        raise ConceptFileError(f"{source}: the safetensors header must be a JSON object")
    return header


def _read_metadata(metadata: Any, source: str) -> dict[str, str]:
    """``__metadata__`` is a flat str → str map, as the format defines it."""
    if not isinstance(metadata, dict):
        raise ConceptFileError(f"{source}: safetensors '__metadata__' must be an object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise ConceptFileError(
                f"{source}: safetensors metadata {quote(key)} must be a string, "
                f"got {type(value).__name__}"
            )
    return metadata


def _is_int_list(value: Any, length: int | None = None) -> TypeGuard[list[int]]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _stored_tensor(name: str, entry: Any, data: bytes, start: int, source: str) -> StoredTensor:
    where = f"{source}: tensor {quote(name)}"
    if not isinstance(entry, dict):
        raise ConceptFileError(f"{where} is not described by an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in _ITEM_SIZES:
        raise ConceptFileError(f"{where} has an unknown dtype {quote(dtype)}")
    if not _is_int_list(shape) or len(shape) > MAX_NDIM:
        raise ConceptFileError(f"{where}: shape must be a list of at most {MAX_NDIM} sizes")
    if not _is_int_list(offsets, 2) or not offsets[0] <= offsets[1] <= len(data) - start:
        raise ConceptFileError(f"{where}: data_offsets {quote(offsets)} lie outside the file")
    begin, end = offsets
    if math.prod(shape) * _ITEM_SIZES[dtype] != end - begin:
        raise ConceptFileError(
            f"{where}: shape {quote(shape)} of {dtype} does not fill its {end - begin} bytes"
        )
    return StoredTensor(dtype, tuple(shape), start + begin, start + end, data)


# ---------------------------------------------------------------------------------------------
# Pickles


def read_pickle(data: bytes, source: str) -> Any:
    """``torch.load`` with ``weights_only=True`` of a zip whose members are all stored."""
    if not data.startswith(_ZIP_MAGIC):
        raise ConceptFileError(
            f"{source}: not a concept file: neither safetensors nor a .pt/.bin in torch's zip "
            "format (files from torch before 1.6 must be re-saved)"
        )
    _check_zip_members(data, source)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ...
        raise ConceptFileError(
            f"{source}: not a readable concept file (safetensors, or a .pt holding only "
            f"tensors): {_first_line(error)}"
        ) from error


def _check_zip_members(data: bytes, source: str) -> None:
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise ConceptFileError(f"{source}: a damaged zip ({_first_line(error)})") from error
    if len(members) > 4 * MAX_TENSORS:
        raise ConceptFileError(f"{source}: {len(members)} zip members; a concept holds a few")
    if any(member.compress_type != zipfile.ZIP_STORED for member in members):
        raise ConceptFileError(f"{source}: compressed zip members (torch.save stores them plain)")
    if sum(member.file_size for member in members) > len(data):
        raise ConceptFileError(f"{source}: zip members claim more bytes than the file holds")


def check_tensor_storage(tensor: torch.Tensor, where: str) -> None:
    """A plain dense CPU float tensor whose storage holds exactly its elements, nothing shared.

    An expanded or ``as_strided`` view of a one-element storage pickles in a few bytes but
    converts to gigabytes; a meta tensor has no data at all.
    """
    # Each check reads only the tensor's metadata; none touches (or converts) its elements.
    checks: list[tuple[Callable[[], bool], str]] = [
        (lambda: tensor.layout == torch.strided, f"must be a dense tensor, got {tensor.layout}"),
        (lambda: not tensor.is_quantized, "must not be a quantized tensor"),
        (lambda: tensor.device.type == "cpu", f"hold no data (a {tensor.device.type} tensor)"),
        (lambda: tensor.dtype in _FLOAT_DTYPES, f"must be floating point, got {tensor.dtype}"),
        (lambda: tensor.is_contiguous(), "must not be a strided or expanded view"),
        (
            lambda: (
                tensor.storage_offset() == 0
                and tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
            ),
            "must own a storage that holds exactly their elements, not a view of another",
        ),
    ]
    for passes, problem in checks:
        if not passes():
            raise ConceptFileError(f"{where}: vectors {problem}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__
