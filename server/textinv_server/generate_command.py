"""``textinv generate``: local generation (no server), sharing its flags with the remote mode.

The generation flags (prompt, steps, guidance, scheduler, seed, size, images, ``--out``) and the
connection flags are the client's (``textinv_client.cli``), so local and remote ``generate`` take
the same arguments. With ``--server`` the command runs on that server; without it, here, on the
backend ``--backend`` names. Thin: parse, call the library, write files, print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from textinv.concepts import load_concept
from textinv_client.cli import (
    add_connection_arguments,
    add_generation_arguments,
    numbered_output_paths,
    run_remote_generate,
)
from textinv_server.backends import BackendName, BackendOptions
from textinv_server.pipeline import load_generation_pipeline
from textinv_server.requests import GenerationRequest, GenerationResult, Scheduler, StepProgress

EPILOG = (
    "Without --server this runs locally and needs --model. With --num-images N > 1 it writes "
    "numbered files PATH-0.png ... PATH-{N-1}.png beside --out (image i uses seed + i), never a "
    "grid."
)


def add_generate_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images, locally or on a server (--server)",
        description="Generate images from a prompt that may name learned concepts.",
        epilog=EPILOG,
    )
    add_generation_arguments(parser)
    add_local_arguments(parser)
    add_connection_arguments(parser, required=False)
    parser.set_defaults(func=run_generate)


def add_local_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("local generation (without --server)")
    group.add_argument(
        "--model", help="a diffusers SD 1.x/2.x folder (default: the embedded model)"
    )
    group.add_argument(
        "--engines", type=Path, help="the export folder (manifest.json) for onnxruntime/tensorrt"
    )
    group.add_argument(
        "--backend",
        choices=[b.value for b in BackendName],
        default=BackendName.TORCH.value,
        help="where the model runs (torch)",
    )
    group.add_argument(
        "--provider",
        choices=["cpu", "cuda", "tensorrt"],
        default="cpu",
        help="onnxruntime's execution provider (cpu)",
    )
    group.add_argument("--device", default="cpu", help="torch device: cpu or cuda[:N] (cpu)")
    group.add_argument(
        "--concept",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="a concept file to use in the prompt; repeatable",
    )
    group.add_argument("--threads", type=int, default=0, help="CPU threads (library default)")


def run_generate(args: argparse.Namespace) -> int:
    """``--server`` given: the client's remote generate; otherwise local."""
    if args.server:
        return run_remote_generate(args)
    return run_local_generate(args)


def run_local_generate(args: argparse.Namespace) -> int:
    """Generate on this machine and write PNGs to ``--out``; errors reach the composer."""
    options = BackendOptions(
        engines=args.engines, device=args.device, provider=args.provider, threads=args.threads
    )
    pipeline = load_generation_pipeline(args.model, args.backend, options)
    concepts = {
        concept.token: concept.vectors
        for concept in (
            load_concept(path, expected_width=pipeline.host.text_width) for path in args.concept
        )
    }
    result = pipeline(request_from_args(args), concepts, on_step=show_progress)
    print(file=sys.stderr)  # end the progress line
    write_result(result, args.out)
    return 0


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
        width=args.width,
        height=args.height,
        num_images=args.num_images,
        scheduler=Scheduler.parse(args.scheduler),
    )


def show_progress(progress: StepProgress) -> None:
    print(
        f"\rstep {progress.step}/{progress.total_steps} ({progress.step_ms:.0f} ms)",
        end="",
        file=sys.stderr,
        flush=True,
    )


def write_result(result: GenerationResult, out: Path) -> None:
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = numbered_output_paths(out, len(result.images))
    for path, png, seed in zip(paths, result.images, result.seeds, strict=True):
        path.write_bytes(png)
        print(f"wrote {path} (seed {seed})")
    t = result.timings
    print(
        f"total {t.total_ms:.0f} ms (text encoder {t.text_encoder_ms:.0f}, unet "
        f"{t.unet_total_ms:.0f} = {len(t.unet_step_ms)} × {t.unet_step_mean_ms:.1f}, "
        f"vae {t.vae_decode_ms:.0f})"
    )
