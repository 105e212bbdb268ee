"""``textinv bench time-to-concept``: how fast each recipe reaches a faithful concept.

On the embedded shapes world, for every held-out concept, in one run:

1. the ceiling and the floor: the fidelity of the best caption and of the init word alone;
2. each recipe (``textinv.toy.recipes``: ours, and diffusers' README recipe run by our trainer),
   with the learned word's fidelity read at doubling step counts along the run (25, 50, 100, …
   and the last step: ``learning_curve``), through the torch backend (``fidelity``), each share
   with its standard error; the snapshots are read after the run, so reading takes no training
   time;
3. time-to-concept (``textinv.toy.evaluation.time_to_concept``): the training time and steps until
   the learned word first reconstructs the concept in 0.8 of the best caption's share while its
   edit + kept stays within 10% of the caption's; and the fidelity each recipe ends with.

It writes ``time-to-concept.json``, a Markdown table (``time-to-concept.md``, also printed) and a
plot of reconstruction and edit + kept against training time (``time-to-concept.png``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from textinv.cli.bench.fidelity import FidelityReader, FidelitySettings
from textinv.cli.bench.learning_curve import read_curve, read_steps, train_with_snapshots
from textinv.toy import world
from textinv.toy.evaluation.time_to_concept import (
    Fidelity,
    Reading,
    Target,
    speedup,
    time_to_concept,
)
from textinv_client.flags import add_flags, flag, from_flags

MAX_IMAGES = 4096  # per reading and prompt: bounds a run's time


@dataclass(frozen=True)
class TimeToConceptSettings:
    concepts: tuple[str, ...] = field(
        default=(), metadata=flag("held-out concepts (default: all)", nargs="*")
    )
    recipes: tuple[str, ...] = field(
        default=("default", "diffusers"),
        metadata=flag("recipes (textinv.toy.recipes.RECIPES)", nargs="*"),
    )
    out: Path = field(default=Path("out/time-to-concept"), metadata=flag("where to write"))
    reconstruction_images: int = field(default=128, metadata=flag("images per fidelity read"))
    edit_images: int = field(default=48, metadata=flag("images per edit per read (3 edits)"))
    seed: int = field(default=0, metadata=flag("the training runs' and the images' seed"))
    max_steps: int = field(
        default=0, metadata=flag("cut every recipe to this many steps (0: its own)")
    )

    def __post_init__(self) -> None:
        from textinv.toy.recipes import RECIPES

        for name, known in (("concepts", world.HELD_OUT), ("recipes", RECIPES)):
            unknown = [v for v in getattr(self, name) if v.strip("<>") not in known]
            if unknown:
                raise ValueError(f"--{name}: unknown {unknown}; known: {', '.join(known)}")
        for name in ("reconstruction_images", "edit_images"):
            if not 1 <= getattr(self, name) <= MAX_IMAGES:
                raise ValueError(f"--{name.replace('_', '-')} must be 1..{MAX_IMAGES}")
        if self.max_steps < 0:
            raise ValueError(f"--max-steps must be ≥ 0, got {self.max_steps}")


@dataclass(frozen=True)
class RecipeRun:
    recipe: str
    steps: int  # those it ran (fewer than its own where DVAR stopped it)
    seconds: float  # the whole run's training time, its set-up (the latent cache) included
    readings: tuple[Reading, ...]
    reached: Reading | None  # the first reading that meets the target


@dataclass(frozen=True)
class ConceptResult:
    concept: str
    caption: Fidelity
    init_word: Fidelity
    target: Target
    runs: tuple[RecipeRun, ...]


def add_time_to_concept_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    parser = bench_subparsers.add_parser(
        "time-to-concept",
        help="fidelity against training time: our recipe vs diffusers' README recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_flags(parser, TimeToConceptSettings)
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    settings = from_flags(TimeToConceptSettings, args)
    results = measure_time_to_concept(settings, progress=lambda line: print(line, flush=True))
    table = markdown(results)
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "time-to-concept.md").write_text(table + "\n", encoding="utf-8")
    (settings.out / "time-to-concept.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8"
    )
    from textinv.cli.bench.time_to_concept_plot import fidelity_over_time

    plot = fidelity_over_time(results, settings.out / "time-to-concept.png")
    print(table)
    print(f"wrote {settings.out / 'time-to-concept.md'}, {plot}")
    return 0


def measure_time_to_concept(
    settings: TimeToConceptSettings, progress: Any = None
) -> list[ConceptResult]:
    """Every held-out concept under every recipe, as plain data (see the module docstring)."""
    from textinv.model import load_base_model
    from textinv.toy.classifier import load_classifier

    say = progress or (lambda _: None)
    model = load_base_model(None)
    fidelity = FidelitySettings(
        settings.reconstruction_images, settings.edit_images, seed=settings.seed
    )
    reader = FidelityReader(model, load_classifier(), fidelity)
    results = []
    for name in (c.strip("<>") for c in settings.concepts or tuple(world.HELD_OUT)):
        target = world.held_out_concept(name)
        caption = reader.read(target.best_caption, target)
        floor = reader.read(target.init_word, target)
        say(f"{name}: best caption {caption.reconstruction}, init word {floor.reconstruction}")
        goal = Target.of(caption, floor)
        runs = tuple(
            _run_recipe(recipe, target, model, reader, goal, settings, say)
            for recipe in settings.recipes
        )
        results.append(ConceptResult(name, caption, floor, goal, runs))
    return results


def _run_recipe(
    recipe: str,
    target: world.HeldOutConcept,
    model: Any,
    reader: FidelityReader,
    goal: Target,
    settings: TimeToConceptSettings,
    say: Any,
) -> RecipeRun:
    """One training run of ``recipe``, then the learned word read at its snapshots."""
    from textinv.toy.recipes import RECIPES, recipe_config

    steps = RECIPES[recipe][1]
    steps = min(steps, settings.max_steps) if settings.max_steps else steps
    out = settings.out / "runs" / f"{target.name}-{recipe}"
    config = replace(recipe_config(recipe, out, target.name, steps, settings.seed), overwrite=True)
    snapshots = train_with_snapshots(config, model, read_steps(steps))
    say(f"  {recipe}: {snapshots[-1].step} steps in {snapshots[-1].seconds:.1f} s")
    readings = read_curve(reader, config.token, target, snapshots, say)
    reached = time_to_concept(readings, goal)
    return RecipeRun(recipe, readings[-1].step, readings[-1].seconds, readings, reached)


def markdown(results: list[ConceptResult]) -> str:
    """Per concept: the caption and init-word rows, then each recipe's final fidelity and its
    time-to-concept; a last line per concept with the ratio to diffusers' recipe."""
    lines = [
        "| concept | row | steps | training s | reconstruction | edit applied | edit + kept "
        "| time-to-concept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row, fidelity in (("best caption", result.caption), ("init word", result.init_word)):
            lines.append(_row(result.concept, row, "", "", fidelity, ""))
        for run in result.runs:
            final = run.readings[-1].fidelity
            reached = (
                f"{run.reached.seconds:.1f} s ({run.reached.step} steps)"
                if run.reached
                else "not reached"
                if result.target.measurable
                else "unmeasurable: no words draw it"
            )
            lines.append(_row(result.concept, run.recipe, run.steps, f"{run.seconds:.1f}", final,
                              reached))  # fmt: skip
        if ratio := _ratio(result):
            lines.append(f"| {result.concept} | ratio | | | | | | {ratio} |")
    target = "0.8 of the best caption's reconstruction, edit + kept within 10% of the caption's"
    return "\n".join(lines) + f"\n\ntime-to-concept: training time until {target}."


def _row(concept: str, row: str, steps: Any, seconds: str, f: Fidelity, reached: str) -> str:
    return (
        f"| {concept} | {row} | {steps} | {seconds} | {f.reconstruction} | {f.edit_applied} "
        f"| {f.edit_kept} | {reached} |"
    )


def _ratio(result: ConceptResult) -> str:
    """diffusers' time-to-concept over each other recipe's."""
    runs = {run.recipe: run for run in result.runs}
    theirs = runs.get("diffusers")
    if theirs is None or not result.target.measurable:
        return ""
    return "; ".join(
        f"{name}: {speedup(run.reached, theirs.reached, theirs.seconds)}"
        for name, run in runs.items()
        if name != "diffusers"
    )
