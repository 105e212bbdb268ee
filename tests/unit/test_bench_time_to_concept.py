"""``textinv bench time-to-concept`` on the embedded model, shortened: the fidelity read through the
torch backend, and the bench's files."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from textinv.cli.bench.fidelity import FidelityReader, FidelitySettings
from textinv.cli.bench.time_to_concept import TimeToConceptSettings, run_bench
from textinv.toy import world
from textinv.toy.classifier import load_classifier, read


@pytest.fixture(scope="module")
def reader() -> FidelityReader:
    from textinv.model import load_base_model

    settings = FidelitySettings(reconstruction_images=16, edit_images=4)
    return FidelityReader(load_base_model(None), load_classifier(), settings)


@pytest.mark.parametrize("name", sorted(world.HELD_OUT))
def test_a_known_image_is_read_as_its_concept(name: str) -> None:
    target = world.held_out_concept(name)
    readings = read(load_classifier(), world.concept_images(target, count=8))
    assert all(r.shows(target.thing) for r in readings)
    # Control: the other concepts' images are not read as this one.
    for other in (world.held_out_concept(n) for n in world.HELD_OUT if n != name):
        images = world.concept_images(other)
        assert not any(r.shows(target.thing) for r in read(load_classifier(), images))


def test_the_runtime_reads_the_caption_above_the_init_word(reader: FidelityReader) -> None:
    target = world.held_out_concept("toy-stripes")
    caption = reader.read(target.best_caption, target)
    floor = reader.read(target.init_word, target)
    assert caption.reconstruction.n == 16 and caption.edit_kept.n == 12
    assert caption.reconstruction.value >= floor.reconstruction.value + 0.25
    assert floor.edit_applied.value > 0.5  # the edits themselves work for plain words


def test_the_same_seeds_give_the_same_reading(reader: FidelityReader) -> None:
    target = world.held_out_concept("toy-stripes")
    assert reader.read(target.best_caption, target) == reader.read(target.best_caption, target)


def test_the_bench_writes_its_table_data_and_plot(tmp_path: Path) -> None:
    settings = TimeToConceptSettings(
        concepts=("toy-stripes",),
        recipes=("default", "diffusers"),
        out=tmp_path,
        reconstruction_images=4,
        edit_images=2,
        max_steps=3,
    )
    args = argparse.Namespace(**{k: getattr(settings, k) for k in settings.__dataclass_fields__})
    assert run_bench(args) == 0
    (result,) = json.loads((tmp_path / "time-to-concept.json").read_text())
    assert [run["recipe"] for run in result["runs"]] == ["default", "diffusers"]
    for run in result["runs"]:
        assert [r["step"] for r in run["readings"]] == [3]
        assert run["readings"][0]["fidelity"]["reconstruction"]["n"] == 4
        assert run["seconds"] > 0
    table = (tmp_path / "time-to-concept.md").read_text()
    assert "| toy-stripes | best caption |" in table and "| toy-stripes | diffusers | 3 |" in table
    assert (tmp_path / "time-to-concept.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"recipes": ("default", "fastest")}, "--recipes: unknown ['fastest']"),
        ({"concepts": ("toy-unicorn",)}, "--concepts: unknown ['toy-unicorn']"),
        ({"reconstruction_images": 0}, "--reconstruction-images must be 1..4096"),
        ({"edit_images": 10**9}, "--edit-images must be 1..4096"),
        ({"max_steps": -1}, "--max-steps must be ≥ 0"),
    ],
)
def test_bad_settings_are_named(changes: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        TimeToConceptSettings(**changes)  # type: ignore[arg-type]
