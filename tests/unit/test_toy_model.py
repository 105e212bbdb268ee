"""The shipped shapes-world model: it loads, it is the recorded one, it follows prompts, and a
short inversion on it learns a held-out concept better than its init word (issue 7)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from textinv.hardware import cpu_features
from textinv.model import load_base_model
from textinv.toy import default_model_path, world
from textinv.toy.classifier import load_classifier, read
from textinv.toy.evaluate import EvalConfig, evaluate, generate
from textinv_client.choices import Precision

# sha256 over the shipped folder's files (textinv.model.model_hash); changes only on a re-ship.
SHIPPED_MODEL_HASH = "b41388ee0f8fa67ccda1db07f0f89d668413979cf72c9f7e35922e0fb7bc0343"
MAX_BYTES = 25 * 1024 * 1024


def test_the_shipped_model_loads_and_is_the_recorded_one() -> None:
    folder = default_model_path()
    model = load_base_model(folder)
    assert model.model_hash == SHIPPED_MODEL_HASH
    assert model.default_resolution == world.RESOLUTION
    assert (model.text_width, model.vae_scale_factor) == (64, 4)
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_BYTES
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(folder.rglob("*.bin"))


def _pipeline() -> Any:
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(
        str(default_model_path()), dtype=torch.float32, safety_checker=None
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_the_model_draws_what_prompts_ask_for() -> None:
    """Background, shape and colour, read back by the classifier from 4 seeds per prompt, at the
    service's default 25 steps. The model has a known weak spot here: it draws most purple
    crosses blue (0 of 8 read purple), so the colour bar is two thirds."""
    pipeline, classifier = _pipeline(), load_classifier()
    config = EvalConfig(concept=Path("unused"), images_per_prompt=4, steps=25)
    cases = [
        ("yellow", "circle", "black"),
        ("white", "heart", "green"),
        ("purple", "cross", "yellow"),
    ]
    hits = {"background": 0, "shape": 0, "colour": 0}
    for colour, shape, background in cases:
        images = generate(pipeline, f"a {colour} {shape} on a {background} background", config)
        for reading in read(classifier, images):
            hits["background"] += reading.background == background
            hits["shape"] += reading.shape == shape
            hits["colour"] += colour in reading.colours
    total = 4 * len(cases)
    assert hits["background"] >= 0.9 * total and hits["colour"] >= 2 / 3 * total, hits
    assert hits["shape"] >= 0.5 * total, hits


@pytest.fixture(scope="module", params=[Precision.FP32, Precision.BF16])
def learned_concept(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The demo's held-out concept, learned by the project's trainer from its 4 bundled images,
    with the frozen model in fp32 and in bf16 (``--precision auto`` picks bf16 for a wide model
    on a CPU with AMX; this model is narrow, so bf16 is asked for here)."""
    from dataclasses import replace

    from textinv.toy.recipes import inversion_config
    from textinv.trainer import CONCEPT_FILE, invert

    if request.param is Precision.BF16 and not cpu_features().fast_bf16:
        pytest.skip(
            "bf16 is emulated through fp32 on this CPU (no AVX512-BF16 or AMX): auto never picks "
            "it here, and the run takes about 6 min instead of 1; it runs where bf16 is native"
        )
    out = tmp_path_factory.mktemp("inversion") / "run"
    config = replace(inversion_config(out), precision=request.param)
    invert(config)  # the demo's recipe as it is: 800 steps, about 20 s in fp32
    return out / CONCEPT_FILE


def test_a_short_inversion_beats_the_init_word(learned_concept: Path) -> None:
    report = evaluate(
        EvalConfig(concept=learned_concept, images_per_prompt=8, steps=20, edits=False)
    )
    rows = {row.name: row for row in report.rows}
    init, learned = rows["init word"], rows["learned concept"]
    assert init.similarity is not None and learned.similarity is not None
    assert init.reconstruction is not None and learned.reconstruction is not None
    assert learned.similarity >= init.similarity + 0.1, report.rows
    assert learned.reconstruction >= init.reconstruction, report.rows


def test_through_the_runtime_the_learned_word_beats_the_init_word(learned_concept: Path) -> None:
    """The same run read as ``textinv bench time-to-concept`` reads it: the torch backend's
    images, 32 per prompt, each share with its standard error."""
    from textinv.cli.bench.fidelity import FidelityReader, FidelitySettings
    from textinv.concepts import load_concept

    target = world.held_out_concept("toy-stripes")
    concept = load_concept(learned_concept)
    settings = FidelitySettings(reconstruction_images=32, edit_images=4)
    reader = FidelityReader(load_base_model(None), load_classifier(), settings)
    learned = reader.read(concept.token, target, {concept.token: concept.vectors})
    init = reader.read(target.init_word, target)
    assert learned.reconstruction.n == 32
    assert learned.reconstruction.value >= init.reconstruction.value + 0.15, (learned, init)
