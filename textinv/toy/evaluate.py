"""``textinv toy eval``: measure a learned concept the way the paper does, exactly, on a CPU.

Generation here goes through diffusers' own ``StableDiffusionPipeline`` with
``load_textual_inversion`` (the reference runtime; the service's runtime is measured against it).
A fixed, seeded set of images is generated for three rows:

1. the init word alone ("a photo of a circle"),
2. the learned concept ("a photo of a <toy-stripes>"),
3. the best caption that words can give ("a photo of a yellow and purple striped circle"),

each for a reconstruction prompt and for edit prompts that change one thing (the background, the
size and place, the texture). On the shapes world the fidelity classifier reads every image:

- reconstruction: the share of "a photo of a {}" images that show the concept (shape, pattern and
  colours), the paper's image similarity made exact; similarity gives partial credit (the mean of
  shape, pattern and colour-set overlap), for models that come close without matching;
- edit applied / edit + kept: the share of edit images where the change happened, and where it
  happened and the concept was kept, the paper's text similarity made exact; edit × sim. gives
  the kept part partial credit.

For real models, ``--clip FOLDER`` adds the paper's CLIP image similarity (generated images
against the concept's training images) and CLIP text similarity (images against their prompt
without the placeholder), from any local ``CLIPModel`` folder, and ``--dino FOLDER`` the DINO
image similarity (mean cosine of [CLS] features) from a local ViT folder. The reference images are
``--clip-images``, or the held-out concept's own images.

The parts live in ``textinv.toy.evaluation``; this module is where to import them from.
"""

from __future__ import annotations

from collections.abc import Callable

from textinv.concepts import load_concept
from textinv.toy import world
from textinv.toy.evaluation.config import EvalConfig
from textinv.toy.evaluation.edits import RECONSTRUCTION_PROMPT, Edit, edits_for, generic_edits
from textinv.toy.evaluation.generation import generate, load_pipeline
from textinv.toy.evaluation.report import (
    EvalReport,
    EvalRow,
    format_table,
    image_grid,
    save_report,
)
from textinv.toy.evaluation.scoring import Scorers, identity_similarity, load_scorers, score_row
from textinv.toy.evaluation.similarity import ClipScorer, DinoScorer

__all__ = [
    "RECONSTRUCTION_PROMPT",
    "ClipScorer",
    "DinoScorer",
    "Edit",
    "EvalConfig",
    "EvalReport",
    "EvalRow",
    "ProgressCallback",
    "Scorers",
    "edits_for",
    "evaluate",
    "format_table",
    "generate",
    "identity_similarity",
    "image_grid",
    "load_pipeline",
    "load_scorers",
    "save_report",
]

ProgressCallback = Callable[[str], None]


def evaluate(config: EvalConfig, progress: ProgressCallback | None = None) -> EvalReport:
    """Generate the fixed set for each row and score it (see the module docstring)."""
    from textinv.toy import default_model_path

    # 1. The concept, the model, and what the concept should show (a held-out target, or none).
    concept = load_concept(config.concept)
    model = config.model or default_model_path()
    target = _target(config, concept.token)
    init_word = config.init_word or (target.init_word if target else None)
    if init_word is None:
        raise ValueError(
            f"concept {concept.token!r} is not a held-out shapes-world concept; give --init-word"
        )
    # 2. What reads the images, and the reference pipeline with the concept loaded.
    scorers = load_scorers(config, target)
    pipeline = load_pipeline(model, config.concept, concept.token)
    # 3. The rows (what stands for the concept in the prompts) and the edits they share.
    row_words = [("init word", init_word), ("learned concept", concept.token)]
    if target:
        row_words.append(("best caption", target.best_caption))
    edits = (edits_for(target.thing) if target else generic_edits()) if config.edits else ()
    # 4. Generate and score each row.
    rows, prompts, images = [], {}, {}
    for name, words in row_words:
        if progress:
            progress(f"generating for the {name} row ({words})")
        row, row_prompts, row_images = score_row(name, words, edits, pipeline, config, scorers)
        rows.append(row)
        prompts[name], images[name] = row_prompts, row_images
    return EvalReport(concept.token, str(model), tuple(rows), prompts, images)


def _target(config: EvalConfig, token: str) -> world.HeldOutConcept | None:
    if config.target is not None:
        return world.held_out_concept(config.target)
    name = token.strip("<>")
    return world.HELD_OUT.get(name)
