"""Scoring ``textinv toy eval``'s rows: the classifier's exact measures, and CLIP and DINO.

On the shapes world the fidelity classifier reads every image: reconstruction is the share of
images that show the concept (shape, pattern and colours), similarity its partial credit, and the
edit columns the share of edit images where the change happened (and the concept was kept).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from textinv.toy import world
from textinv.toy.classifier import Reading, ShapesClassifier, load_classifier, read
from textinv.toy.evaluation.config import EvalConfig
from textinv.toy.evaluation.edits import RECONSTRUCTION_PROMPT, Edit
from textinv.toy.evaluation.generation import generate
from textinv.toy.evaluation.report import EvalRow
from textinv.toy.evaluation.similarity import ClipScorer, DinoScorer


@dataclass(frozen=True)
class Scorers:
    """What reads the generated images: the classifier (shapes world), CLIP and DINO (any model)."""

    target: world.HeldOutConcept | None = None
    classifier: ShapesClassifier | None = None
    clip: ClipScorer | None = None
    dino: DinoScorer | None = None
    references: tuple[Image.Image, ...] = ()  # the concept's own images, for CLIP-I and DINO


def load_scorers(config: EvalConfig, target: world.HeldOutConcept | None) -> Scorers:
    """The classifier for a shapes-world target; CLIP and DINO where their folders are given."""
    classifier = None
    if target is not None:
        classifier = load_classifier(config.classifier) if config.classifier else load_classifier()
    references = tuple(Image.open(p).convert("RGB") for p in config.clip_images)
    if not references and target is not None:
        references = tuple(world.concept_images(target))
    return Scorers(
        target=target,
        classifier=classifier,
        clip=ClipScorer.load(config.clip) if config.clip else None,
        dino=DinoScorer.load(config.dino) if config.dino else None,
        references=references,
    )


def score_row(
    name: str,
    words: str,
    edits: Sequence[Edit],
    pipeline: Any,
    config: EvalConfig,
    scorers: Scorers,
) -> tuple[EvalRow, list[str], list[Image.Image]]:
    """Generate one row's fixed set (reconstruction, then each edit) and score it."""
    recon_prompt = RECONSTRUCTION_PROMPT.format(words)
    recon_images = generate(pipeline, recon_prompt, config)
    edit_images = [generate(pipeline, e.template.format(words), config) for e in edits]
    prompts = [recon_prompt, *(e.template.format(words) for e in edits)]
    values: dict[str, float] = {}
    if scorers.target is not None and scorers.classifier is not None:
        values |= _classifier_scores(
            scorers.classifier, scorers.target, recon_images, edits, edit_images
        )
    if scorers.references:
        if scorers.clip is not None:
            values["clip_image"] = scorers.clip.image_similarity(recon_images, scorers.references)
        if scorers.dino is not None:
            values["dino"] = scorers.dino.image_similarity(recon_images, scorers.references)
    if scorers.clip is not None and edits:
        # The paper's text similarity: the prompt with the placeholder left out.
        texts = [" ".join(e.template.format("").split()) for e in edits]
        pairs = zip(edit_images, texts, strict=True)
        values["clip_text"] = float(np.mean([scorers.clip.text_similarity(b, t) for b, t in pairs]))
    all_images = recon_images + [image for batch in edit_images for image in batch]
    return EvalRow(name, words, **values), prompts, all_images


def _classifier_scores(
    classifier: ShapesClassifier,
    target: world.HeldOutConcept,
    recon_images: Sequence[Image.Image],
    edits: Sequence[Edit],
    edit_images: Sequence[Sequence[Image.Image]],
) -> dict[str, float]:
    readings = read(classifier, recon_images)
    values = {
        "reconstruction": _share(r.shows(target.thing) for r in readings),
        "similarity": _share(identity_similarity(r, target.thing) for r in readings),
    }
    applied, kept, partial = [], [], []
    for edit, batch in zip(edits, edit_images, strict=True):
        for reading in read(classifier, batch):
            applied.append(edit.applied(reading))
            kept.append(edit.applied(reading) and reading.shows(target.thing))
            partial.append(edit.applied(reading) * identity_similarity(reading, target.thing))
    if edits:
        values["edit_applied"], values["edit_kept"] = _share(applied), _share(kept)
        values["edit_similarity"] = _share(partial)
    return values


def identity_similarity(reading: Reading, thing: world.Thing) -> float:
    """Partial credit for the concept's identity, in [0, 1]: the mean of the shape matching, the
    pattern matching, and the overlap (Jaccard) of the colour sets."""
    pattern = "striped" if thing.stripe_colour else "solid"
    overlap = len(reading.colours & thing.colours) / len(reading.colours | thing.colours)
    return (float(reading.shape == thing.shape) + float(reading.pattern == pattern) + overlap) / 3


def _share(values: Iterable[float]) -> float:
    """The mean of ``values`` (booleans count 0 or 1), 0 if there are none."""
    values = list(values)
    return float(np.mean(values)) if values else 0.0
