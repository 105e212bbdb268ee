"""The client's value checks: its request dataclasses' and its command-line flags' one home.

The ``check_*`` functions raise ``ValueError`` naming the field and the bad value (a request
built in code); the flag parsers raise ``argparse.ArgumentTypeError`` with the value (argparse
prefixes the flag's name), so a bad flag exits 2 before any connection is made. Torch-free.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# A seed is a uint64 on the wire; a generation takes any (image i uses (seed + i) mod 2^64).
MAX_SEED = 2**64 - 1
# An inversion job's seed: the trainer adds small offsets to it, so one bit of headroom.
MAX_TRAIN_SEED = 2**63 - 1
# K, the number of vectors per concept, as the trainer allows it (issue 3).
MAX_VECTORS = 16


# -- request fields -------------------------------------------------------------------------------


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1 (or None for the default), got {value}")


def check_multiple_of_8(name: str, value: int | None) -> None:
    if value is not None and (value < 8 or value % 8 != 0):
        raise ValueError(f"{name} must be a positive multiple of 8, got {value}")


def check_seed(seed: int | None, highest: int = MAX_SEED) -> None:
    if seed is not None and not 0 <= seed <= highest:
        bound = {MAX_SEED: "2**64-1", MAX_TRAIN_SEED: "2**63-1"}.get(highest, str(highest))
        raise ValueError(f"seed must be in 0..{bound}, got {seed}")


def check_not_blank(name: str, text: str) -> None:
    if not text.strip():
        raise ValueError(f"{name} must not be empty, got {text!r}")


# -- flag values (argparse types) -----------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def unit_float(text: str) -> float:
    """A fraction in (0, 1], such as img2img's strength."""
    value = float(text)
    if not 0 < value <= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2**64-1, got {value}")
    return value


def train_seed_int(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_TRAIN_SEED:
        raise argparse.ArgumentTypeError(f"must be in 0..2**63-1, got {value}")
    return value


def size_int(text: str) -> int:
    value = int(text)
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 8, got {value}")
    return value


# An output file's suffix → the image format it names (``ImageFormat`` values).
IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def image_path(text: str) -> Path:
    path = Path(text)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise argparse.ArgumentTypeError(f"must end in {', '.join(IMAGE_SUFFIXES)}, got {text!r}")
    return path
