"""``textinv generate``: local generation (no server), sharing its flags with the remote mode.

The generation flags (prompt, steps, guidance, scheduler, seed, size, images, ``--out``) and the
connection flags are the client's (``textinv_client.cli``), so local and remote ``generate`` take
the same arguments. With ``--server`` the command runs on that server; without it, here, on the
backend ``--backend`` names (the fields of ``LocalGeneration``). Thin: parse, call the library,
write files, print.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textinv.concept_fit import load_for_model, per_encoder
from textinv.sdxl_text import SdxlConcepts
from textinv_client.choices import Precision
from textinv_client.cli import (
    add_connection_arguments,
    add_generation_arguments,
    generate_request_from_args,
    numbered_output_paths,
    run_remote_generate,
)
from textinv_client.flags import Flag, add_flags, flag, from_flags
from textinv_server.backends import BackendName, BackendOptions, Provider, TorchOptions
from textinv_server.host_model import HostModel
from textinv_server.pipeline import Concepts, load_generation_pipeline
from textinv_server.requests import GenerationRequest, GenerationResult, StepProgress

EPILOG = (
    "Without --server this runs locally and needs --model. With --num-images N > 1 it writes "
    "numbered files PATH-0.png ... PATH-{N-1}.png beside --out (image i uses seed + i), never a "
    "grid."
)
LOCAL_GROUP = "local generation (without --server)"


def _local(help: str, **options: Any) -> dict[str, Flag]:
    """A flag of the local-generation group."""
    return flag(help, group=LOCAL_GROUP, **options)


@dataclass(frozen=True)
class LocalGeneration:
    """Where a local ``generate`` runs, and the concept files its prompt may name."""

    model: str | None = field(
        default=None, metadata=_local("a diffusers SD 1.x/2.x folder (default: the embedded model)")
    )
    engines: Path | None = field(
        default=None, metadata=_local("the export folder (manifest.json) for onnxruntime/tensorrt")
    )
    backend: BackendName = field(
        default=BackendName.TORCH, metadata=_local("where the model runs (torch)")
    )
    provider: Provider = field(
        default=Provider.CPU, metadata=_local("onnxruntime's execution provider (cpu)")
    )
    device: str = field(default="cpu", metadata=_local("torch device: cpu or cuda[:N] (cpu)"))
    concepts: tuple[Path, ...] = field(
        default=(),
        metadata=_local(
            "a concept file to use in the prompt; repeatable", name="--concept", metavar="FILE"
        ),
    )
    threads: int = field(default=0, metadata=_local("CPU threads (library default)"))
    weights: Precision = field(
        default=Precision.AUTO,
        metadata=_local("torch: the weights' precision; auto follows the processor (auto)"),
    )

    def backend_options(self) -> BackendOptions:
        return BackendOptions(
            engines=self.engines, device=self.device, provider=self.provider, threads=self.threads,
            torch_options=TorchOptions(weights=self.weights),
        )  # fmt: skip


def add_generate_subcommand(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate images, locally or on a server (--server)",
        description="Generate images from a prompt that may name learned concepts.",
        epilog=EPILOG,
    )
    add_generation_arguments(parser)
    add_flags(parser, LocalGeneration)
    add_connection_arguments(parser, required=False)
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """``--server`` given: the client's remote generate; otherwise local."""
    if args.server:
        return run_remote_generate(args)
    return run_local_generate(args)


def run_local_generate(args: argparse.Namespace) -> int:
    """Generate on this machine and write the images to ``--out``; errors reach the composer."""
    local = from_flags(LocalGeneration, args)
    pipeline = load_generation_pipeline(local.model, local.backend, local.backend_options())
    concepts = load_concepts(local.concepts, pipeline.host)
    result = pipeline(request_from_args(args), concepts, on_step=show_progress)
    print(file=sys.stderr)  # end the progress line
    write_result(result, args.out)
    return 0


def load_concepts(paths: tuple[Path, ...], host: HostModel) -> Concepts | SdxlConcepts:
    """``{token: vectors [K, D]}`` of each file, checked against the model's text width; for
    SDXL, both sets of vectors, each checked against its encoder's width."""
    return per_encoder((load_for_model(path, host.text_widths) for path in paths), host.is_sdxl)


def request_from_args(args: argparse.Namespace) -> GenerationRequest:
    """The client's request from the shared flags, as the pipeline's request (None: default)."""
    given = dataclasses.asdict(generate_request_from_args(args))
    return GenerationRequest(**{name: value for name, value in given.items() if value is not None})


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
    for path, data, seed in zip(paths, result.images, result.seeds, strict=True):
        path.write_bytes(data)
        print(f"wrote {path} (seed {seed})")
    t = result.timings
    print(
        f"total {t.total_ms:.0f} ms (text encoder {t.text_encoder_ms:.0f}, unet "
        f"{t.unet_total_ms:.0f} = {len(t.unet_step_ms)} × {t.unet_step_mean_ms:.1f}, "
        f"vae {t.vae_decode_ms:.0f})"
    )
