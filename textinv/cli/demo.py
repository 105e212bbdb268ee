"""``textinv demo``: the whole service, end to end, on the embedded shapes-world model.

1. invert a held-out concept (one the model never saw) from its 4 bundled images;
2. export the model to ONNX;
3. start the gRPC server (onnxruntime backend) on a free local port;
4. register the learned concept through the client;
5. generate prompts that use it, through gRPC;
then measure fidelity (the paper's reconstruction and editability, read by the shipped
classifier) and write an image grid and a short report.

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
    eval_images_per_prompt: int = 8

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(invert_steps=30, generate_steps=4, images_per_prompt=1, eval_images_per_prompt=2)


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

    with _stage(1, "invert", timings):
        concept_file, token, init_word = _invert(model, concept_name, out, settings)
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
        table = _evaluate(model, concept_file, concept_name, init_word, settings, out)
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


def _invert(model: Path, name: str, out: Path, settings: DemoSettings) -> tuple[Path, str, str]:
    from dataclasses import replace

    from textinv.toy import world
    from textinv.toy.recipes import inversion_config
    from textinv.trainer import CONCEPT_FILE, invert

    held_out = world.held_out_concept(name.strip("<>"))
    config = inversion_config(out / "concept", held_out.name, model=model)
    steps = settings.invert_steps or config.steps
    config = replace(config, steps=steps, overwrite=True)  # a rerun of the demo starts over
    print(f"      learning {held_out.token} from 4 images, init word {held_out.init_word!r}")
    invert(config, progress=_progress_line(max(steps // 10, 1)))
    return Path(config.out) / CONCEPT_FILE, held_out.token, held_out.init_word


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
    model: Path,
    concept_file: Path,
    name: str,
    init_word: str,
    settings: DemoSettings,
    out: Path,
) -> str:
    from textinv.toy.evaluate import EvalConfig, evaluate, format_table

    config = EvalConfig(
        concept=concept_file,
        model=model,
        target=name.strip("<>"),
        init_word=init_word,
        images_per_prompt=settings.eval_images_per_prompt,
        steps=settings.generate_steps,
    )
    report = evaluate(config)
    (out / "fidelity.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    table = format_table(report)
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
        "Fidelity (share of generated images the shipped classifier reads as the concept):",
        "",
        "```",
        table,
        "```",
        "",
        "![grid](grid.png): the training images (top row), then one row per prompt.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
