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
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from textinv.concepts import load_concept
from textinv.toy import DEFAULT_GUIDANCE, world
from textinv.toy.classifier import Reading, ShapesClassifier, load_classifier, read

RECONSTRUCTION_PROMPT = "a photo of a {}"
ProgressCallback = Callable[[str], None]


@dataclass(frozen=True)
class Edit:
    """A prompt that changes one thing, and the test that the change happened."""

    template: str
    background: str | None = None
    texture: str | None = None
    size: str | None = None
    position: str | None = None

    def applied(self, reading: Reading) -> bool:
        wanted = {
            "background": self.background,
            "texture": self.texture,
            "size": self.size,
            "position": self.position,
        }
        return all(getattr(reading, k) == v for k, v in wanted.items() if v is not None)


def edits_for(thing: world.Thing) -> tuple[Edit, ...]:
    """Three edits whose backgrounds avoid the concept's own colours."""
    free = [c for c in ("green", "white", "blue", "red", "gray") if c not in thing.colours]
    return (
        Edit(f"a {{}} on a {free[0]} background", background=free[0]),
        Edit("a small {} in the top left corner", size="small", position="top left"),
        Edit(
            f"a {{}} on a {free[1]} checkered background", background=free[1], texture="checkered"
        ),
    )


@dataclass(frozen=True)
class EvalConfig:
    concept: Path  # a concept file (any format textinv reads)
    model: Path | None = None  # None: the embedded shapes-world model
    target: str | None = None  # the held-out concept it should show; None: from the token
    init_word: str | None = None  # None: the target's init word
    images_per_prompt: int = 8
    steps: int = 25
    guidance: float = DEFAULT_GUIDANCE
    seed: int = 0
    clip: Path | None = None  # a local CLIPModel folder, for the paper's CLIP similarities
    clip_images: tuple[Path, ...] = ()  # reference images for CLIP image similarity
    classifier: Path | None = None  # None: the shipped fidelity classifier
    edits: bool = True  # False: reconstruction only (a quicker check)
    dino: Path | None = None  # a local DINO (ViT) folder, for DINO image similarity

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt must be at least 1, got {self.images_per_prompt}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


@dataclass(frozen=True)
class EvalRow:
    name: str  # "init word", "learned concept", "best caption"
    words: str  # what stands in the prompts for the concept
    reconstruction: float | None = None  # share of images that show the concept
    similarity: float | None = None  # mean partial credit for it (``identity_similarity``)
    edit_applied: float | None = None  # share of edit images where the change happened
    edit_kept: float | None = None  # ... and the concept was kept
    edit_similarity: float | None = None  # ... with partial credit for the concept
    clip_image: float | None = None  # mean cosine, generated vs reference images
    clip_text: float | None = None  # mean cosine, edit images vs prompt without the concept
    dino: float | None = None  # mean cosine of DINO [CLS] features, generated vs reference


@dataclass(frozen=True)
class EvalReport:
    concept: str
    model: str
    rows: tuple[EvalRow, ...]
    prompts: dict[str, list[str]] = field(default_factory=dict)  # row name → its prompts
    images: dict[str, list[Image.Image]] = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "model": self.model,
            "rows": [asdict(row) for row in self.rows],
            "prompts": self.prompts,
        }


# 1. Generation through diffusers


def load_pipeline(model: Path, concept_file: Path, token: str) -> Any:
    from diffusers import StableDiffusionPipeline

    # fp32 on the CPU: the shipped weights are fp16, which CPUs run slowly or not at all.
    pipeline = StableDiffusionPipeline.from_pretrained(
        str(model), dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipeline.set_progress_bar_config(disable=True)
    concept = load_concept(concept_file)
    # diffusers names a K-vector concept token, token_1, …; give it plain [K, D] vectors.
    pipeline.load_textual_inversion(
        {concept.token: concept.vectors.float()}, token=token or concept.token
    )
    return pipeline


def generate(pipeline: Any, prompt: str, config: EvalConfig) -> list[Image.Image]:
    """``images_per_prompt`` images of one prompt, seeds ``seed`` … ``seed + n - 1``."""
    generators = [
        torch.Generator().manual_seed(config.seed + i) for i in range(config.images_per_prompt)
    ]
    result = pipeline(
        [prompt] * config.images_per_prompt,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        generator=generators,
    )
    return list(result.images)


# 2. The three rows


@dataclass(frozen=True)
class Scorers:
    """What reads the generated images: the classifier (shapes world), CLIP and DINO (any model)."""

    target: world.HeldOutConcept | None = None
    classifier: ShapesClassifier | None = None
    clip: ClipScorer | None = None
    dino: DinoScorer | None = None
    references: tuple[Image.Image, ...] = ()  # the concept's own images, for CLIP-I and DINO


def evaluate(config: EvalConfig, progress: ProgressCallback | None = None) -> EvalReport:
    """Generate the fixed set for each row and score it (see the module docstring)."""
    from textinv.toy import default_model_path

    concept = load_concept(config.concept)
    model = config.model or default_model_path()
    target = _target(config, concept.token)
    init_word = config.init_word or (target.init_word if target else None)
    if init_word is None:
        raise ValueError(
            f"concept {concept.token!r} is not a held-out shapes-world concept; give --init-word"
        )
    scorers = load_scorers(config, target)
    pipeline = load_pipeline(model, config.concept, concept.token)
    row_words = [("init word", init_word), ("learned concept", concept.token)]
    if target:
        row_words.append(("best caption", target.best_caption))
    edits = edits_for(target.thing) if target else _generic_edits()
    if not config.edits:
        edits = ()
    rows, prompts, images = [], {}, {}
    for name, words in row_words:
        if progress:
            progress(f"generating for the {name} row ({words})")
        row, row_prompts, row_images = _score_row(name, words, edits, pipeline, config, scorers)
        rows.append(row)
        prompts[name], images[name] = row_prompts, row_images
    return EvalReport(concept.token, str(model), tuple(rows), prompts, images)


def load_scorers(config: EvalConfig, target: world.HeldOutConcept | None) -> Scorers:
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


def _target(config: EvalConfig, token: str) -> world.HeldOutConcept | None:
    if config.target is not None:
        return world.held_out_concept(config.target)
    name = token.strip("<>")
    return world.HELD_OUT.get(name)


def _generic_edits() -> tuple[Edit, ...]:
    return (Edit("a {} on the beach"), Edit("a painting of a {}"), Edit("a {} in the snow"))


def _score_row(
    name: str,
    words: str,
    edits: Sequence[Edit],
    pipeline: Any,
    config: EvalConfig,
    scorers: Scorers,
) -> tuple[EvalRow, list[str], list[Image.Image]]:
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


def _share(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else 0.0


# 3. CLIP similarity (the paper's measures, for real models)


@dataclass(frozen=True)
class ClipScorer:
    """Image and text embeddings from a local ``CLIPModel`` folder (no processor classes)."""

    model: Any
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def load(cls, folder: Path) -> ClipScorer:
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"CLIP model folder {str(folder)!r} has no config.json")
        model = CLIPModel.from_pretrained(str(folder)).eval()
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        mean, std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)  # OpenAI CLIP's
        preprocessor = folder / "preprocessor_config.json"
        if preprocessor.is_file():
            settings = json.loads(preprocessor.read_text())
            mean = tuple(settings.get("image_mean", mean))  # type: ignore[assignment]
            std = tuple(settings.get("image_std", std))  # type: ignore[assignment]
        return cls(model, tokenizer, int(model.config.vision_config.image_size), mean, std)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, E], unit length."""
        pixels = _pixels(images, self.image_size, self.mean, self.std)
        return _unit(_features(self.model.get_image_features(pixel_values=pixels)))

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, E], unit length."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        return _unit(_features(self.model.get_text_features(**tokens)))

    def image_similarity(
        self, images: Sequence[Image.Image], references: Sequence[Image.Image]
    ) -> float:
        """Mean pairwise cosine between generated and reference images."""
        return float((self.embed_images(images) @ self.embed_images(references).T).mean())

    def text_similarity(self, images: Sequence[Image.Image], text: str) -> float:
        return float((self.embed_images(images) @ self.embed_texts([text]).T).mean())


@dataclass(frozen=True)
class DinoScorer:
    """[CLS] features of a local ViT folder (DINO, DINOv2, or any ``AutoModel`` ViT)."""

    model: Any
    image_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet's, as DINO uses
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def load(cls, folder: Path) -> DinoScorer:
        from transformers import AutoModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"DINO model folder {str(folder)!r} has no config.json")
        model = AutoModel.from_pretrained(str(folder)).eval()
        return cls(model, int(getattr(model.config, "image_size", 224)))

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D], unit length."""
        pixels = _pixels(images, self.image_size, self.mean, self.std)
        return _unit(self.model(pixel_values=pixels).last_hidden_state[:, 0])

    def image_similarity(
        self, images: Sequence[Image.Image], references: Sequence[Image.Image]
    ) -> float:
        return float((self.embed_images(images) @ self.embed_images(references).T).mean())


def _pixels(
    images: Sequence[Image.Image],
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
) -> torch.Tensor:
    """PIL images → [N, 3, size, size], normalized."""
    arrays = [
        np.asarray(i.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)) for i in images
    ]
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    return (pixels - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _features(output: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor, or an output object with ``pooler_output``."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[no-any-return]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-8)


# 4. Reporting


def format_table(report: EvalReport) -> str:
    """The report as a fixed-width table, one row per prompt kind."""
    columns = [
        ("reconstruction", "reconstruction"),
        ("similarity", "similarity"),
        ("edit_applied", "edit applied"),
        ("edit_kept", "edit + kept"),
        ("edit_similarity", "edit × sim."),
        ("clip_image", "CLIP-I"),
        ("clip_text", "CLIP-T"),
        ("dino", "DINO"),
    ]
    shown = [(k, h) for k, h in columns if any(getattr(r, k) is not None for r in report.rows)]
    width = max(len(f"{r.name} ({r.words})") for r in report.rows)
    header = f"{'row':<{width}}  " + "  ".join(f"{h:>14}" for _, h in shown)
    lines = [header, "-" * len(header)]
    for row in report.rows:
        cells = [_cell(getattr(row, k)) for k, _ in shown]
        label = f"{row.name} ({row.words})"
        lines.append(f"{label:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def image_grid(report: EvalReport, scale: int = 3) -> Image.Image:
    """One line of images per row of the report, in generation order."""
    lines = list(report.images.values())
    columns = max(len(line) for line in lines)
    side = lines[0][0].size[0] * scale
    grid = Image.new("RGB", (columns * side, len(lines) * side), "white")
    for y, line in enumerate(lines):
        for x, image in enumerate(line):
            grid.paste(image.resize((side, side), Image.Resampling.NEAREST), (x * side, y * side))
    return grid


# 5. Command line


def add_eval_subcommand(toy_subparsers: argparse._SubParsersAction) -> None:
    parser = toy_subparsers.add_parser(
        "eval", help="measure a learned concept on the embedded model: reconstruction, editability"
    )
    parser.add_argument("--concept", type=Path, required=True, help="a learned concept file")
    parser.add_argument("--model", type=Path, help="a diffusers folder (default: embedded model)")
    parser.add_argument("--target", help="the held-out concept it should show (default: token)")
    parser.add_argument("--init-word", help="the init word row's word (default: the target's)")
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", type=Path, help="a local CLIPModel folder for CLIP-I/CLIP-T")
    parser.add_argument(
        "--clip-images", type=Path, nargs="*", default=[], help="reference images for CLIP-I"
    )
    parser.add_argument("--dino", type=Path, help="a local DINO (ViT) folder for DINO similarity")
    parser.add_argument("--out", type=Path, help="write report.json and grid.png here")
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    config = EvalConfig(
        concept=args.concept,
        model=args.model,
        target=args.target,
        init_word=args.init_word,
        images_per_prompt=args.images,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        clip=args.clip,
        clip_images=tuple(args.clip_images),
        dino=args.dino,
    )
    report = evaluate(config, progress=lambda message: print(message, flush=True))
    print(format_table(report))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(json.dumps(report.to_json(), indent=2))
        image_grid(report).save(args.out / "grid.png")
        print(f"wrote {args.out / 'report.json'} and {args.out / 'grid.png'}")
    return 0
