"""``textinv demo``: the whole service, end to end, on the embedded shapes-world model.

1. invert a held-out concept (one the model never saw) from its 4 bundled images;
2. export the model to ONNX;
3. start the gRPC server (onnxruntime backend) on a free local port;
4. register the learned concept through the client;
5. generate prompts that use it, through gRPC;
then measure fidelity (the paper's reconstruction and editability, read by the shipped
classifier from images the torch backend generates) for the best caption, the init word and the
learned word at points along its run, with standard errors, and the time until the learned word
first worked (``textinv bench time-to-concept``'s measure); and write an image grid, a plot of
fidelity against training time and a short report.

It lives in ``textinv/cli/`` because it composes every stage (trainer, export, server, client);
it is an entry point, thin over their libraries. ``--quick`` shortens every stage (fewer steps,
fewer images) for CI, through the same code path.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from textinv.cli.bench.learning_curve import Snapshot
    from textinv_server.background import BackgroundServer

DEMO_PROMPTS = (
    "a photo of {}",
    "a {} on a green background",
    "a small {} in the corner",
    "a large {} on a pink background",
)


@dataclass(frozen=True)
class DemoSettings:
    invert_steps: int | None = None  # None: the recipe's (textinv.toy.recipes)
    generate_steps: int = 25
    images_per_prompt: int = 2
    # Per fidelity reading: with 128 and 3 × 48 images no standard error exceeds 0.045.
    reconstruction_images: int = 128
    edit_images: int = 48
    first_read: int = 100  # the learned word is read at this step, each doubling, and the last

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(
            invert_steps=30,
            generate_steps=4,
            images_per_prompt=1,
            reconstruction_images=4,
            edit_images=2,
            first_read=15,
        )


def add_demo_subcommand(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="invert, export, serve and generate on the built-in model, end to end"
    )
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="where to write results")
    demo.add_argument("--concept", default=None, help="the held-out concept to learn")
    demo.add_argument(
        "--model", type=Path, help="a shapes-world model folder (default: the embedded one)"
    )
    demo.add_argument("--quick", action="store_true", help="shorter stages, same code path (CI)")
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from textinv.toy import DEMO_CONCEPT, default_model_path

    settings = DemoSettings.quick() if args.quick else DemoSettings()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model_path()
    concept_name = args.concept or DEMO_CONCEPT
    timings: dict[str, float] = {}

    base = _load_model(model)
    with _stage(1, "invert", timings):
        concept_file, token, init_word, snapshots = _invert(base, concept_name, out, settings)
    with _stage(2, "export", timings):
        engines = _export(model, out / "engines")
    with _stage(3, "serve", timings):
        server = _start_server(model, engines, out / "server")
        print(f"      listening on {server.target} (onnxruntime backend)")
    try:
        with _stage(4, "register", timings):
            _register(server.target, concept_file)
        with _stage(5, "generate", timings):
            generated = _generate(server.target, token, settings, out)
    finally:
        server.stop()
    with _stage(6, "evaluate", timings):
        table = _evaluate(base, concept_name, snapshots, settings, out)
    _write_grid(concept_name, generated, out / "grid.png")
    _write_report(out, token, init_word, timings, table, settings)
    print(f"done in {sum(timings.values()):.0f} s: {out / 'report.md'}, {out / 'grid.png'}")
    return 0


@contextmanager
def _stage(number: int, name: str, timings: dict[str, float]) -> Iterator[None]:
    print(f"[{number}/6] {name}", flush=True)
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started
    print(f"      {name}: {timings[name]:.1f} s", flush=True)


def _progress_line(every: int) -> Callable[[Any], None]:
    def report(event: Any) -> None:
        if getattr(event, "event", "step") == "step" and event.step % every == 0:
            print(
                f"      step {event.step}/{event.total_steps}  loss {event.loss:.4f}  "
                f"{event.steps_per_s:.1f} steps/s  eta {event.eta_s:.0f} s",
                flush=True,
            )

    return report


def _load_model(folder: Path) -> Any:
    from textinv.model import load_base_model

    return load_base_model(folder)


def _invert(
    model: Any, name: str, out: Path, settings: DemoSettings
) -> tuple[Path, str, str, list[Snapshot]]:
    """The default recipe on the concept's 4 images, keeping the learned vectors along the way."""
    from dataclasses import replace

    from textinv.cli.bench.learning_curve import read_steps, train_with_snapshots
    from textinv.toy import world
    from textinv.toy.recipes import inversion_config
    from textinv.trainer import CONCEPT_FILE

    held_out = world.held_out_concept(name.strip("<>"))
    config = inversion_config(out / "concept", held_out.name, model=model.path)
    steps = settings.invert_steps or config.steps
    config = replace(config, steps=steps, overwrite=True)  # a rerun of the demo starts over
    print(f"      learning {held_out.token} from 4 images, init word {held_out.init_word!r}")
    progress = _progress_line(max(steps // 10, 1))
    snapshots = train_with_snapshots(
        config, model, read_steps(steps, settings.first_read), progress
    )
    return Path(config.out) / CONCEPT_FILE, held_out.token, held_out.init_word, snapshots


def _export(model: Path, folder: Path) -> Path:
    from textinv.model import load_base_model
    from textinv_export.exporter import ExportConfig, export_model
    from textinv_export.specs import Component, Range, ShapeRanges

    base = load_base_model(model)
    side = base.default_resolution
    ranges = ShapeRanges(batch=Range(1, 2, 8), resolution=Range(side, side, side))
    components = (Component.TEXT_ENCODER, Component.UNET, Component.VAE_DECODER)
    export_model(base, ExportConfig(folder, ranges=ranges, components=components))
    print(f"      wrote {folder / 'manifest.json'}")
    return folder


def _start_server(model: Path, engines: Path, data: Path) -> BackgroundServer:
    from textinv_server.backends import BackendName
    from textinv_server.background import BackgroundServer
    from textinv_server.config import ServerConfig

    config = ServerConfig(
        model=str(model), data_dir=data, port=0, backend=BackendName.ONNXRUNTIME, engines=engines
    )
    return BackgroundServer(config)


def _register(target: str, concept_file: Path) -> None:
    from textinv_client import TextInvClient

    with TextInvClient(target) as textinv:
        info = textinv.register_concept(
            concept_file.read_bytes(), filename=concept_file.name, replace=True
        )
    print(f"      registered {info.token}: {info.num_vectors} × {info.embedding_dim}")


def _generate(
    target: str, token: str, settings: DemoSettings, out: Path
) -> list[tuple[str, list[Image.Image]]]:
    import io

    from textinv.toy import DEFAULT_GUIDANCE
    from textinv_client import GenerateRequest, TextInvClient

    generated = []
    with TextInvClient(target) as textinv:
        for index, template in enumerate(DEMO_PROMPTS):
            prompt = template.format(token)
            request = GenerateRequest(
                prompt,
                steps=settings.generate_steps,
                guidance_scale=DEFAULT_GUIDANCE,
                seed=index,
                num_images=settings.images_per_prompt,
            )
            result = textinv.generate(request)
            images = [Image.open(io.BytesIO(png)).convert("RGB") for png in result.images]
            for number, image in enumerate(images):
                image.save(out / f"generated-{index}-{number}.png")
            generated.append((prompt, images))
            print(f"      {prompt!r}: {len(images)} image(s) in {result.timings.total_ms:.0f} ms")
    return generated


def _evaluate(
    model: Any, name: str, snapshots: list[Snapshot], settings: DemoSettings, out: Path
) -> str:
    """The fidelity table (best caption, init word, the learned word at its last step) with
    standard errors, the time-to-concept, and the plot of fidelity against training time."""
    from dataclasses import asdict

    from textinv.cli.bench.fidelity import FidelityReader, FidelitySettings
    from textinv.cli.bench.learning_curve import read_curve
    from textinv.cli.bench.time_to_concept import ConceptResult, RecipeRun, markdown
    from textinv.cli.bench.time_to_concept_plot import fidelity_over_time
    from textinv.toy import world
    from textinv.toy.classifier import load_classifier
    from textinv.toy.evaluation.time_to_concept import Target, time_to_concept

    fidelity = FidelitySettings(
        settings.reconstruction_images, settings.edit_images, steps=settings.generate_steps
    )
    reader = FidelityReader(model, load_classifier(), fidelity)
    target = world.held_out_concept(name)
    caption = reader.read(target.best_caption, target)
    floor = reader.read(target.init_word, target)
    goal = Target.of(caption, floor)
    readings = read_curve(reader, target.token, target, snapshots)
    last = readings[-1]
    run = RecipeRun("learned", last.step, last.seconds, readings, time_to_concept(readings, goal))
    result = ConceptResult(target.name, caption, floor, goal, (run,))
    (out / "fidelity.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    fidelity_over_time([result], out / "time-to-concept.png")
    table = markdown([result])
    print("\n".join(f"      {line}" for line in table.splitlines()))
    return table


def _write_grid(name: str, generated: list[tuple[str, list[Image.Image]]], path: Path) -> None:
    """Top row: the training images; then one row per prompt."""
    from textinv.toy import concept_image_paths

    training = [Image.open(p).convert("RGB") for p in concept_image_paths(name)]
    rows = [training] + [images for _, images in generated]
    side = 96
    columns = max(len(row) for row in rows)
    grid = Image.new("RGB", (columns * side, len(rows) * side), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.resize((side, side), Image.Resampling.NEAREST), (x * side, y * side))
    grid.save(path)


def _write_report(
    out: Path,
    token: str,
    init_word: str,
    timings: dict[str, float],
    table: str,
    settings: DemoSettings,
) -> None:
    lines = [
        f"# textinv demo: learning {token}",
        "",
        f"Init word: `{init_word}`. Settings: {settings}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {name} | {seconds:.1f} |" for name, seconds in timings.items()),
        f"| total | {sum(timings.values()):.1f} |",
        "",
        "Fidelity: the share of images (generated by the torch backend) that the shipped",
        "classifier reads as the concept, ± its standard error. `learned` is the learned word",
        "after its last step; the plot shows it along the run.",
        "",
        table,
        "",
        "![fidelity against training time](time-to-concept.png)",
        "",
        "![grid](grid.png): the training images (top row), then one row per prompt.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
