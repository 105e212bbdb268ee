"""The one ``textinv`` command, composed from each package's subcommands.

This package is the only place in ``textinv/`` that imports ``export/``, ``server/`` or
``client/`` (DESIGN: layout): this module gathers each package's subcommands, ``demo`` composes
every stage, and ``bench/`` holds the benchmarks, entry points over every library. Each package
contributes ``add_*_subcommands(subparsers)``; every handler returns an exit code. Known errors
print one ``error:`` line; nothing prints a traceback to the user.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from textinv import __version__
from textinv.errors import TextInvError
from textinv.single_file import MODEL_CONFIG_ENV, is_shipped_name

Registrar = Callable[[argparse._SubParsersAction], None]


def _registrars() -> list[Registrar]:
    from textinv.cli.demo import add_demo_subcommand
    from textinv.concept_file_commands import add_concept_subcommands
    from textinv.invert_command import add_invert_subcommand
    from textinv.toy.commands import add_toy_subcommands
    from textinv_client.cli import add_remote_subcommands
    from textinv_export.export_command import add_export_subcommand
    from textinv_server.generate_command import add_generate_subcommand
    from textinv_server.keys_command import add_keys_subcommand
    from textinv_server.serve_command import add_serve_subcommand
    from textinv_server.store_migrate import add_store_subcommand
    from textinv_server.worker_command import add_worker_subcommand

    return [
        add_serve_subcommand,
        add_worker_subcommand,
        add_keys_subcommand,
        add_store_subcommand,
        add_concept_subcommands,
        add_remote_subcommands,
        add_generate_subcommand,
        add_demo_subcommand,
        add_invert_subcommand,
        add_export_subcommand,
        add_toy_subcommands,
    ]


def _bench_registrars() -> list[Registrar]:
    """The ``textinv bench ...`` subcommands (benchmarks are entry points too)."""
    from textinv.cli.bench.concepts import add_concepts_bench
    from textinv.cli.bench.export import add_export_bench
    from textinv.cli.bench.generate import add_generate_bench
    from textinv.cli.bench.invert import add_invert_bench
    from textinv.cli.bench.report import add_report_bench
    from textinv.cli.bench.serve import add_serve_bench
    from textinv.cli.bench.store import add_store_bench
    from textinv.cli.bench.time_to_concept import add_time_to_concept_bench

    return [
        add_invert_bench,
        add_export_bench,
        add_generate_bench,
        add_concepts_bench,
        add_serve_bench,
        add_store_bench,
        add_report_bench,
        add_time_to_concept_bench,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textinv",
        description="Textual Inversion for a frozen Stable Diffusion model, served fast over gRPC.",
    )
    parser.add_argument("--version", action="version", version=f"textinv {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _registrars():
        register(subparsers)
    bench = subparsers.add_parser("bench", help="measure speed against a baseline, as ratios")
    bench_subparsers = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    for register in _bench_registrars():
        register(bench_subparsers)
    for command in [*subparsers.choices.values(), *bench_subparsers.choices.values()]:
        add_model_config_flag(command)
    return parser


def add_model_config_flag(command: argparse.ArgumentParser) -> None:
    """``--config DIR`` beside every ``--model``: a single-file checkpoint's architecture."""
    if (
        "--model" in command._option_string_actions
        and "--config" not in command._option_string_actions
    ):
        command.add_argument(
            "--config",
            dest="model_config",
            type=Path,
            metavar="DIR",
            help="for a single-file --model (.safetensors in the original layout): a "
            "diffusers-layout folder of its configs and tokenizer, without weights, or a "
            "shipped family: sd15, sd21 (768 px, v-prediction), sd21-base, sdxl-base "
            "(default: the family the file's keys show)",
        )


def use_model_config(args: argparse.Namespace) -> None:
    """``--config`` reaches every loader, and every process the command starts, through the
    environment (``textinv.single_file.MODEL_CONFIG_ENV``)."""
    config = getattr(args, "model_config", None)
    if config is not None:
        shipped = is_shipped_name(config)
        os.environ[MODEL_CONFIG_ENV] = str(config if shipped else config.expanduser().resolve())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        use_model_config(args)
        return int(args.func(args))
    except (TextInvError, ValueError, LookupError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["build_parser", "main"]
