"""A job's uploaded images: their budget, checked before anything is written, and their files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from textinv.data import DEFAULT_MAX_IMAGE_PIXELS, load_training_image
from textinv.errors import InvalidInputError
from textinv_server.store import disk_full_error, is_disk_full


@dataclass(frozen=True)
class UploadedImage:
    data: bytes
    filename: str  # for messages only
    caption: str | None = None  # "{}" marks the token
    # Width × height the header may claim: the server's Limits.max_training_image_pixels (set by
    # convert.create_job_from_pb), so that save_images checks each upload against it.
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS


def check_uploads(images: Sequence[UploadedImage], *, max_images: int, max_bytes: int) -> None:
    """The number of images and the bytes they store (images and captions) within the limits."""
    if not 1 <= len(images) <= max_images:
        raise InvalidInputError(f"a job takes 1 to {max_images} images, got {len(images)}")
    uploaded = sum(len(image.data) + len((image.caption or "").encode()) for image in images)
    if uploaded > max_bytes:
        raise InvalidInputError(f"the images are {uploaded} bytes; a job may store {max_bytes}")


def save_images(folder: Path, images: Sequence[UploadedImage]) -> None:
    """Save and check each image before the job is accepted.

    Each header's width × height is checked against the image's ``max_pixels`` before it is
    decoded. Files get server-made names (``000.img``): an upload's file name never becomes a path.
    Errors name the upload's file name, never the server's path; a full disk is a
    ``StorageFullError``.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            path = folder / f"{index:03d}.img"
            path.write_bytes(image.data)
            if image.caption is not None:
                path.with_suffix(".txt").write_text(image.caption, encoding="utf-8")
            name = image.filename or f"image {index}"
            load_training_image(path, name=name, max_pixels=image.max_pixels)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error() from error
        raise
