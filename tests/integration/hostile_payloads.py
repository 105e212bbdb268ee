"""Hostile upload bytes for the hostile suite: image bombs, lying headers, strided tensors.

Every builder returns plain ``bytes`` made here, in the test, so that a case states exactly what it
sends. Small files that claim (or expand to) a lot are the point: each one is cheap to send and
costly to a server that trusts it.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image

from textinv.concepts import Concept, concept_to_bytes

# The tiny test model's text-encoder width (tests.conftest builds it with width 32).
WIDTH = 32


# ---------------------------------------------------------------------------------------------
# Images


def image_bytes(image_format: str, side: int = 64, seed: int = 0) -> bytes:
    """A valid ``side``×``side`` RGB image of random pixels in ``image_format`` (PIL's name)."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_bomb(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels, with only a few rows of data.

    A few KB on the wire; a decoder that trusts the header allocates width × height × 3 bytes
    (60000×60000 RGB is 10.8 GB) before it finds the data short.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    channels = {0: 1, 2: 3}[color_type]
    rows = b"".join(b"\x00" + bytes(width * channels) for _ in range(4))  # filter byte + zeros
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


# ---------------------------------------------------------------------------------------------
# Concept files


def concept_file(token: str = "<hostile>", rows: int = 1, seed: int = 0) -> bytes:
    """A valid diffusers-format safetensors concept for the tiny model."""
    vectors = torch.randn(rows, WIDTH, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))


def _torch_save(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def expanded_view(rows: int, width: int) -> torch.Tensor:
    """[rows, width] with strides (0, 0): every element is the one element of its storage."""
    view = torch.zeros(1).expand(rows, width)
    assert view.untyped_storage().nbytes() == 4  # the file holds one float, not rows × width
    return view


def strided_pt(rows: int, width: int = WIDTH, layout: str = "tensor") -> bytes:
    """A ``.pt`` concept whose tensor is a huge view of a one-element storage (a few hundred B)."""
    view = expanded_view(rows, width)
    if layout == "a1111":
        return _torch_save({"string_to_param": {"*": view}, "name": "<strided>"})
    if layout == "kohya":
        return _torch_save({"emb_params": view})
    return _torch_save(view)


def overlapping_pt(rows: int) -> bytes:
    """[rows, WIDTH] through ``as_strided`` with row stride 1: rows overlap in a tiny storage."""
    storage = torch.zeros(rows + WIDTH - 1)
    return _torch_save({"<overlap>": storage.as_strided((rows, WIDTH), (1, 1))})


def meta_pt(rows: int = 1_000_000) -> bytes:
    """A ``.pt`` holding a meta tensor: a shape with no data at all."""
    return _torch_save({"<meta>": torch.empty(rows, WIDTH, device="meta")})


def shared_list_pt(depth: int = 3, fan_out: int = 1000) -> bytes:
    """A pickle of nested lists sharing one child: a few KB that reach fan_out**depth leaves."""
    leaf: list[object] = [0.0] * fan_out
    for _ in range(depth - 1):
        leaf = [leaf] * fan_out
    return _torch_save({"string_to_param": {"*": leaf}, "name": "<shared>"})


def safetensors_raw(
    header: Mapping[str, object], body: bytes = b"", length: int | None = None
) -> bytes:
    """A safetensors file from its parts; ``length`` overrides the 8-byte header length."""
    text = json.dumps(header).encode()
    stated = len(text) if length is None else length
    return struct.pack("<Q", stated) + text + body


def safetensors_huge_length() -> bytes:
    """The 8-byte header length says 2**62 bytes; the file is a few bytes long."""
    return safetensors_raw({"<big>": {"dtype": "F32", "shape": [1, WIDTH]}}, length=2**62)


def safetensors_lying_shape() -> bytes:
    """A header that claims a [2**31, WIDTH] tensor over 128 bytes of data."""
    header = {"<liar>": {"dtype": "F32", "shape": [2**31, WIDTH], "data_offsets": [0, 2**38]}}
    return safetensors_raw(header, body=bytes(128))


def safetensors_deep_header(depth: int = 100_000) -> bytes:
    """A header whose JSON nests ``depth`` arrays: a recursive parser runs out of stack."""
    text = b'{"__metadata__": ' + b"[" * depth + b"]" * depth + b"}"
    return struct.pack("<Q", len(text)) + text


def safetensors_metadata(token: str, metadata: dict[str, str]) -> bytes:
    """A valid concept whose header metadata is ``metadata`` (our own ``textinv.*`` keys)."""
    from safetensors.torch import save

    return save({token: torch.randn(1, WIDTH)}, metadata=metadata)


def sdxl_empty_clip_g() -> bytes:
    """An SDXL concept (clip_l + clip_g) whose clip_g has no rows."""
    from safetensors.torch import save

    return save({"clip_l": torch.randn(1, WIDTH), "clip_g": torch.zeros(0, 1280)})


def pickle_with_code() -> bytes:
    """A pickle that would call ``os.system`` if loaded without ``weights_only``."""

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return (os.system, ("echo hostile > /dev/null",))

    return pickle.dumps({"<code>": Exploit()})


def mutate(data: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    """``data`` with bytes at positions (mod its length) replaced, then cut to ``cut`` bytes."""
    mutable = bytearray(data)
    for position, value in flips:
        mutable[position % len(mutable)] = value
    return bytes(mutable[:cut] if cut is not None else mutable)
