"""The trainer's data pipeline: image loading, the augmentation pool and the VAE latent cache."""

from __future__ import annotations

import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textinv.data import (
    MAX_CAPTION_CHARS,
    AugmentationSpec,
    CropMode,
    augmentation_pool,
    crop_boxes,
    encode_latent_cache,
    list_image_files,
    load_image,
    load_training_image,
    load_training_images,
    read_caption,
)
from textinv.errors import InvalidInputError
from textinv.templates import fill_template, templates_for


def _rgb(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_exif_orientation_is_honoured(tmp_path: Path) -> None:
    image = _rgb(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    rgb, alpha = load_image(tmp_path / "rotated.jpg")
    assert rgb.size == (80, 120)
    assert alpha is None


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("L", ".png"), ("P", ".png"), ("CMYK", ".jpg"), ("I;16", ".png"), ("1", ".png")],
)
def test_modes_are_converted_to_rgb(tmp_path: Path, mode: str, suffix: str) -> None:
    source = _rgb()
    if mode == "I;16":
        array = (np.asarray(source.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        image = Image.fromarray(array)  # uint16 → "I;16"
    else:
        image = source.convert(mode)
    path = tmp_path / f"image{suffix}"
    image.save(path)
    rgb, alpha = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (96, 80) and alpha is None
    if mode == "I;16":  # 16-bit values are scaled down, not clipped to white
        expected = np.asarray(source.convert("L"), dtype=np.float64)
        assert np.abs(np.asarray(rgb, dtype=np.float64)[..., 0] - expected).max() <= 1


def test_alpha_is_composited_on_white_and_kept(tmp_path: Path) -> None:
    rgba = np.zeros((80, 96, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:40, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    rgb, alpha = load_image(tmp_path / "cutout.png")
    pixels = np.asarray(rgb)
    assert tuple(pixels[10, 10]) == (255, 0, 0)
    assert tuple(pixels[70, 10]) == (255, 255, 255)
    assert alpha is not None and alpha.getpixel((10, 70)) == 0


def test_palette_with_transparency_keeps_alpha(tmp_path: Path) -> None:
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (0, 0, 32, 64))
    image.info["transparency"] = 0
    image.save(tmp_path / "palette.png", transparency=0)
    rgb, alpha = load_image(tmp_path / "palette.png")
    assert alpha is not None
    assert tuple(np.asarray(rgb)[5, 60]) == (255, 255, 255)  # transparent → white
    assert tuple(np.asarray(rgb)[5, 5]) == (255, 0, 0)


def test_opaque_alpha_is_dropped(tmp_path: Path) -> None:
    _rgb().convert("RGBA").save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png")[1] is None


def test_small_corrupt_and_non_images_are_refused_by_name(tmp_path: Path) -> None:
    _rgb(63, 200).save(tmp_path / "small.png")
    with pytest.raises(InvalidInputError, match=r"small\.png.*63×200.*64 px"):
        load_image(tmp_path / "small.png")
    _rgb().save(tmp_path / "whole.png")  # large enough: the size check passes, decoding fails
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(data[: len(data) // 3])
    with pytest.raises(InvalidInputError, match=r"broken\.png.*not a readable image"):
        load_image(tmp_path / "broken.png")
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(InvalidInputError, match=r"notes\.md.*not a readable image"):
        load_image(tmp_path / "notes.md")


def test_folder_checks(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        list_image_files(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("a photo of {}")
    (tmp_path / ".hidden").write_text("x")
    with pytest.raises(InvalidInputError, match="holds no images"):
        list_image_files(tmp_path)
    for i in range(3):
        _rgb(seed=i).save(tmp_path / f"{i}.png")
    with pytest.raises(InvalidInputError, match="holds 3 files; the cap is 2"):
        list_image_files(tmp_path, max_images=2)
    assert [p.name for p in list_image_files(tmp_path)] == ["0.png", "1.png", "2.png"]


def test_captions(tmp_path: Path) -> None:
    _rgb().save(tmp_path / "a.png")
    _rgb().save(tmp_path / "b.png")
    (tmp_path / "a.txt").write_text("a photo of {} on a table\n")
    images = load_training_images(tmp_path)
    assert [i.caption for i in images] == ["a photo of {} on a table", None]
    (tmp_path / "b.txt").write_text("a photo on a table")
    with pytest.raises(InvalidInputError, match=r"b\.txt.*must contain '\{\}'"):
        read_caption(tmp_path / "b.png")


def test_augmentation_pool_is_fixed_and_sized() -> None:
    from textinv.data import TrainingImage

    image = TrainingImage(Path("x.png"), _rgb(128, 96), None, None)
    center = AugmentationSpec(resolution=64)
    pool = augmentation_pool(image, center, torch.Generator().manual_seed(0))
    assert len(pool) == 2 and all(v.rgb.size == (64, 64) for v in pool)
    mirrored = np.asarray(pool[1].rgb)
    assert np.array_equal(mirrored, np.asarray(pool[0].rgb)[:, ::-1])
    # 128×96 scaled to a 64 px crop: 85.3×64; the centred crop's corner and its mirror's.
    assert pool[0].crop == (96, 128, 0.0, pytest.approx(16 * 64 / 96))
    assert pool[1].crop == (96, 128, 0.0, pytest.approx(128 * 64 / 96 - 16 * 64 / 96 - 64))
    random_spec = AugmentationSpec(
        resolution=64, crop=CropMode.RANDOM, num_crops=3, crop_scale=(0.5, 0.9)
    )
    boxes = crop_boxes((128, 96), random_spec, torch.Generator().manual_seed(1))
    again = crop_boxes((128, 96), random_spec, torch.Generator().manual_seed(1))
    assert boxes == again and len(boxes) == 3
    for left, top, right, bottom in boxes:
        assert right - left == bottom - top
        assert 0.5 * 96 - 1 <= right - left <= 0.9 * 96 + 1
        assert left >= 0 and right <= 128 and top >= 0 and bottom <= 96


def test_latent_cache_shapes_and_sampling(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(2):
        _rgb(seed=i).save(tmp_path / f"{i}.png")
    rgba = np.zeros((80, 80, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:, :40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "2.png")
    images = load_training_images(tmp_path)
    spec = AugmentationSpec(resolution=64)
    cache = encode_latent_cache(
        images, tiny_model.vae, spec, alpha_mask=True, vae_scale_factor=tiny_model.vae_scale_factor
    )
    assert cache.mean.shape == (3, 2, 4, 32, 32) and cache.logvar.shape == cache.mean.shape
    assert cache.mask is not None and cache.mask.shape == (3, 2, 1, 32, 32)
    assert float(cache.mask[0].min()) == 1.0  # images without alpha are fully on
    left = cache.mask[2, 0, 0, :, :10].max()  # transparent left half, not flipped
    assert float(left) == 0.0 and float(cache.mask[2, 1, 0, :, :10].min()) == 1.0
    again = encode_latent_cache(images, tiny_model.vae, spec)
    assert torch.equal(cache.mean, again.mean) and again.mask is None
    pick = torch.tensor([0, 2]), torch.tensor([1, 0])
    first = cache.sample(*pick, torch.Generator().manual_seed(3), 0.5)
    second = cache.sample(*pick, torch.Generator().manual_seed(3), 0.5)
    assert first.shape == (2, 4, 32, 32) and torch.equal(first, second)


# ---------------------------------------------------------------------------------------------
# Hostile uploads: refused from the header, in bounded time and memory.


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` × ``height`` RGB pixels, with one tiny IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "max_pixels", "match"),
    [
        (100_000, 100_000, None, "too large|the limit is"),
        (5000, 5000, None, "5000×5000 px; the limit is"),
        (300, 300, 256 * 256, "300×300 px; the limit is 65536 pixels"),
        (10, 100_000, None, "at least 64 px"),
    ],
)
def test_pixel_bombs_are_refused_from_the_header(
    tmp_path: Path, width: int, height: int, max_pixels: int | None, match: str
) -> None:
    path = tmp_path / "000.img"
    path.write_bytes(_png_header_only(width, height))
    assert len(path.read_bytes()) < 400
    limits = {} if max_pixels is None else {"max_pixels": max_pixels}
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=match) as error:
        load_image(path, "cat.png", **limits)
    assert time.perf_counter() - start < 0.5
    assert "cat.png" in str(error.value) and str(tmp_path) not in str(error.value)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "PPM", "ICO"])
def test_only_png_jpeg_and_webp_are_decoded(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "000.img"
    _rgb().save(path, format=fmt)
    with pytest.raises(InvalidInputError, match=r"'up\.gif'.*PNG, JPEG or WebP"):
        load_training_image(path, name="up.gif")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_three_formats_load(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "000.img"
    _rgb().save(path, format=fmt)
    assert load_image(path)[0].size == (96, 80)


def test_truncated_upload_names_the_upload_not_the_path(tmp_path: Path) -> None:
    path = tmp_path / "000.img"
    _rgb(300, 300).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(InvalidInputError, match="'holiday.jpg': not a readable image") as error:
        load_training_image(path, name="holiday.jpg")
    assert str(tmp_path) not in str(error.value)


def test_loading_is_thread_safe(tmp_path: Path) -> None:
    for i in range(8):
        _rgb(seed=i).save(tmp_path / f"{i}.png")
    (tmp_path / "bomb.png").write_bytes(_png_header_only(100_000, 100_000))
    paths = [tmp_path / f"{i}.png" for i in range(8)] * 2 + [tmp_path / "bomb.png"] * 4

    def load(path: Path) -> str:
        try:
            return load_image(path)[0].mode
        except InvalidInputError:
            return "refused"

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(load, paths))
    assert results == ["RGB"] * 16 + ["refused"] * 4


@pytest.mark.parametrize(
    "caption",
    ["{0.__class__} a photo of {}", "{:999999999} of {}", "{} and {{}} and {x}", "a {}}{{ b"],
)
def test_captions_are_not_format_strings(tmp_path: Path, caption: str) -> None:
    _rgb().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(caption)
    start = time.perf_counter()
    text = read_caption(tmp_path / "a.png")
    assert text == caption
    filled = fill_template(text, "<tok>")
    assert filled == caption.replace("{}", "<tok>") and len(filled) < 100
    assert time.perf_counter() - start < 0.5


def test_long_captions_are_refused_quoted_short(tmp_path: Path) -> None:
    _rgb().save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("{} " + "x" * 1_000_000)
    with pytest.raises(InvalidInputError, match=f"at most {MAX_CAPTION_CHARS} characters") as error:
        read_caption(tmp_path / "a.png", name="a.png")
    assert len(str(error.value)) < 300


def test_templates_fill_only_the_placeholder() -> None:
    assert fill_template("a photo of a {}", "<{0}>") == "a photo of a <{0}>"
    assert all(fill_template(t, "T") == t.format("T") for t in templates_for("object"))
