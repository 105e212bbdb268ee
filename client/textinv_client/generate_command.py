"""``generate --server``: generate on a server and write the images, with the flags that local
``textinv generate`` (the server package's) shares: the request's fields, and ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path

from textinv_client.checks import IMAGE_SUFFIXES, image_path
from textinv_client.command_support import EXIT_OK, SubParsers, add_command, reports_errors
from textinv_client.connection_flags import client_from_args
from textinv_client.flags import add_flags, flag, from_flags
from textinv_client.types import (
    GENERATE_FLAG_DEFAULTS,
    GenerateRequest,
    GenerateResult,
    ImageFormat,
)


@dataclass(frozen=True)
class ImageOutput:
    """Where ``generate`` writes its images, local or remote."""

    out: Path = field(
        metadata=flag(
            "where to write the image (.png, .jpg or .webp; the suffix sets --format); with "
            "--num-images N > 1, numbered files PATH-0.png ... PATH-{N-1}.png are written instead",
            metavar="PATH.png",
            parse=image_path,
        )
    )


# The most an --init-image file may hold: the server's default request limit.
MAX_INIT_IMAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ImageInput:
    """img2img's start image, read from a file into ``GenerateRequest.init_image``."""

    init_image: Path | None = field(
        default=None,
        metadata=flag(
            "img2img: start from this image (PNG, JPEG or WebP; the output takes its size "
            "unless --width/--height are set)",
            metavar="PATH",
        ),
    )

    def read(self) -> bytes | None:
        """The file's bytes; ValueError names a missing, unreadable or oversized file."""
        if self.init_image is None:
            return None
        try:
            with self.init_image.open("rb") as stream:
                data = stream.read(MAX_INIT_IMAGE_BYTES + 1)
        except OSError as error:
            raise ValueError(f"--init-image {str(self.init_image)!r}: {error.strerror}") from error
        if len(data) > MAX_INIT_IMAGE_BYTES:
            raise ValueError(
                f"--init-image {str(self.init_image)!r} is over {MAX_INIT_IMAGE_BYTES} bytes"
            )
        return data


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the generation flags shared by local and remote ``generate``."""
    add_flags(parser, GenerateRequest, required=["prompt"], defaults=GENERATE_FLAG_DEFAULTS)
    add_flags(parser, ImageInput)
    add_flags(parser, ImageOutput, required=["out"])


def generate_request_from_args(args: argparse.Namespace) -> GenerateRequest:
    """The request that the generation flags describe; ValueError names a bad value. The format
    is ``--out``'s suffix's unless ``--format`` names it, and then the two must agree."""
    init_image = from_flags(ImageInput, args).read()
    request = from_flags(GenerateRequest, args, init_image=init_image)
    named = ImageFormat(IMAGE_SUFFIXES[from_flags(ImageOutput, args).out.suffix.lower()])
    if request.output_format is None:
        return dataclasses.replace(request, output_format=named)
    if request.output_format is not named:
        raise ValueError(
            f"--format {request.output_format} does not match --out's suffix ({named} file)"
        )
    return request


def numbered_output_paths(out: Path, count: int) -> list[Path]:
    """``out`` itself for one image; ``PATH-0.png``, ``PATH-1.png``, ... for several."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(count)]


def write_images(result: GenerateResult, out: Path) -> list[Path]:
    paths = numbered_output_paths(out, len(result.images))
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, data in zip(paths, result.images, strict=True):
        path.write_bytes(data)
    return paths


@reports_errors
def run_remote_generate(args: argparse.Namespace) -> int:
    """Generate on the server named by ``--server`` and write the images to ``--out``."""
    request = generate_request_from_args(args)
    with client_from_args(args) as textinv:
        result = textinv.generate(request)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out = from_flags(ImageOutput, args).out
    for path, seed in zip(write_images(result, out), result.seeds, strict=True):
        print(f"wrote {path} (seed {seed})")
    timings = result.timings
    print(
        f"total {timings.total_ms:.0f} ms (queue {timings.queue_wait_ms:.0f}, text encoder "
        f"{timings.text_encoder_ms:.0f}, unet {timings.unet_total_ms:.0f}, vae "
        f"{timings.vae_decode_ms:.0f})"
    )
    return EXIT_OK


def add_generate_command(subparsers: SubParsers) -> None:
    """The standalone client's ``generate`` (``--server`` required)."""
    generate = add_command(subparsers, "generate", run_remote_generate, "generate on a server")
    add_generation_arguments(generate)
