"""``textinv bench concepts`` runs on the tiny model and prints both figures and their ratio."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from textinv.cli.bench.concepts import ConceptsBenchSettings, add_concepts_bench


def test_concepts_bench_prints_the_few_and_the_many(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_concepts_bench(parser.add_subparsers())
    argv = ["concepts", "--model", str(tiny_model_dir), "--few", "3", "--many", "40"]
    args = parser.parse_args([*argv, "--repeats", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    figures = dict(re.findall(r"(\d+) concepts: host-side generate ([\d.]+) ms", out))
    assert set(figures) == {"3", "40"} and all(float(ms) > 0 for ms in figures.values())
    assert re.search(r"ratio 40 / 3 concepts: [\d.]+×", out)


def test_concepts_bench_refuses_fewer_concepts_than_its_prompt_names() -> None:
    with pytest.raises(ValueError, match="--few must be ≥ 3"):
        ConceptsBenchSettings(few=2)
