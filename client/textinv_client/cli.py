"""Command line over the textinv client: remote generate, concepts and jobs.

The ``textinv`` command is composed in textinv/cli/, which calls
:func:`add_remote_subcommands` (the server's ``textinv generate`` calls
:func:`add_generation_arguments` and :func:`add_connection_arguments`) and dispatches with
``args.func(args)``. Every handler returns an exit code: 0 on success, 1 when the server or the
network fails, 2 for bad input (including the server's INVALID_ARGUMENT). Errors print one line,
``error: ...``, on stderr. ``textinv-client`` (or ``python -m textinv_client``) runs the same
commands without textinv's other subcommands, and without torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from textinv_client.command_support import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Handler,
    SubParsers,
    add_command,
    print_json,
    reports_errors,
)
from textinv_client.concept_commands import add_concepts_commands
from textinv_client.connection_flags import (
    API_KEY_ENV,
    ConnectionFlags,
    add_connection_arguments,
    client_from_args,
)
from textinv_client.generate_command import (
    add_generate_command,
    add_generation_arguments,
    generate_request_from_args,
    numbered_output_paths,
    run_remote_generate,
)
from textinv_client.job_commands import add_jobs_commands, inversion_params_from_args

# What other packages compose from here (textinv/cli/, the server's generate command).
__all__ = [
    "API_KEY_ENV",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConnectionFlags",
    "add_connection_arguments",
    "add_generation_arguments",
    "add_remote_subcommands",
    "build_parser",
    "client_from_args",
    "generate_request_from_args",
    "inversion_params_from_args",
    "main",
    "numbered_output_paths",
    "run_remote_generate",
]


@reports_errors
def server_info(args: argparse.Namespace) -> int:
    with client_from_args(args) as textinv:
        print_json(textinv.get_server_info())
    return EXIT_OK


def add_remote_subcommands(subparsers: SubParsers) -> None:
    """Add ``concepts add|ls|get|rm`` and ``jobs submit|watch|ls|cancel`` (each sets ``func``)."""
    add_concepts_commands(subparsers)
    add_jobs_commands(subparsers)


def _program_name() -> str:
    """``textinv-client`` when run as the console script, else ``python -m textinv_client``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name == "textinv-client" else "python -m textinv_client"


def build_parser() -> argparse.ArgumentParser:
    """The standalone client command (``python -m textinv_client``): remote commands only."""
    parser = argparse.ArgumentParser(
        prog=_program_name(), description="Talk to a textinv server (no torch needed)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_generate_command(subparsers)
    add_remote_subcommands(subparsers)
    add_command(subparsers, "info", server_info, "describe the server (JSON)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
