"""Flags derived from config fields: one spelling per flag, parsed into the field's type."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from textinv_client.choices import Precision
from textinv_client.flags import add_flags, flag, from_flags


@dataclass(frozen=True)
class Settings:
    out: str = field(metadata=flag("output folder"))
    steps: int = field(default=30, metadata=flag("denoising steps"))
    lr: float = field(default=1e-3, metadata=flag("learning rate", group="method"))
    precision: Precision = field(default=Precision.FP32, metadata=flag("model precision"))
    resolution: int | None = field(default=None, metadata=flag("side in px"))
    folder: Path | None = field(default=None, metadata=flag("a folder"))
    flip: bool = field(default=True, metadata=flag("no flips", name="--no-flip"))
    fast: bool = field(default=False, metadata=flag("go fast"))
    crop: tuple[float, float] = field(default=(0.5, 1.0), metadata=flag("crop range"))
    keys: tuple[str, ...] = field(default=(), metadata=flag("a key (repeatable)"))
    internal: int = 7  # not a flag


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_flags(parser, Settings, required=["out"])
    return from_flags(Settings, parser.parse_args(list(argv)), internal=9)


def test_defaults_come_from_the_fields() -> None:
    assert parse("--out", "o") == Settings(out="o", internal=9)


def test_each_type_parses_into_the_field_type() -> None:
    settings = parse(
        *("--out", "o", "--steps", "5", "--lr", "0.5", "--precision", "bf16"),
        *("--resolution", "64", "--folder", "x", "--no-flip", "--fast"),
        *("--crop", "0.25", "0.75", "--keys", "a", "--keys", "b"),
    )
    assert settings == Settings(
        out="o",
        steps=5,
        lr=0.5,
        precision=Precision.BF16,
        resolution=64,
        folder=Path("x"),
        flip=False,
        fast=True,
        crop=(0.25, 0.75),
        keys=("a", "b"),
        internal=9,
    )


def test_a_bad_choice_names_the_value_and_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="t")
    add_flags(parser, Settings, required=["out"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "o", "--precision", "fp8"])
    assert "unknown precision 'fp8'; choose one of fp32, fp16, bf16" in capsys.readouterr().err


def test_help_shows_choices_defaults_and_groups() -> None:
    parser = argparse.ArgumentParser(
        prog="t", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_flags(parser, Settings, required=["out"], defaults={"steps": 12})
    text = parser.format_help()
    assert "--precision {fp32,fp16,bf16,auto}" in text
    assert "denoising steps (default: 12)" in text
    assert "method:" in text and "--internal" not in text


@dataclass(frozen=True)
class Many:
    paths: tuple[Path, ...] = field(default=(), metadata=flag("some files", nargs="*"))
    names: tuple[Precision, ...] | None = field(default=None, metadata=flag("some", nargs="+"))


def test_nargs_takes_the_values_after_one_flag() -> None:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_flags(parser, Many)
    assert from_flags(Many, parser.parse_args([])) == Many()
    parsed = from_flags(Many, parser.parse_args(["--paths", "a", "b", "--names", "fp16", "bf16"]))
    assert parsed == Many(paths=(Path("a"), Path("b")), names=(Precision.FP16, Precision.BF16))
