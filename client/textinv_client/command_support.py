"""What every client command shares: exit codes, one-line errors, wiring, and printed output.

Every handler returns an exit code: 0 on success, 1 when the server or the network fails, 2 for
bad input (including the server's INVALID_ARGUMENT). Errors print one line, ``error: ...``, on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Protocol, TypeVar

from textinv_client.connection_flags import add_connection_arguments
from textinv_client.errors import InvalidArgument, TextInvError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Handler = Callable[[argparse.Namespace], int]
T = TypeVar("T")


class SubParsers(Protocol):
    """What argparse's ``add_subparsers()`` returns (its class is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def add_command(
    subparsers: SubParsers, name: str, handler: Handler, help_text: str
) -> argparse.ArgumentParser:
    """A remote command: its parser, with the connection flags, dispatching to ``handler``."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    add_connection_arguments(parser)
    parser.set_defaults(func=handler)
    return parser


# -- errors ---------------------------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def reports_errors(handler: Handler) -> Handler:
    """Turn the errors a command can meet into one ``error:`` line and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except InvalidArgument as error:
            return fail(error.message or str(error), EXIT_USAGE)
        except TextInvError as error:
            return fail(f"{error.code.name.lower()}: {error.message}")
        except ValueError as error:
            return fail(str(error), EXIT_USAGE)
        except OSError as error:
            return fail(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
        except KeyboardInterrupt:
            return fail("interrupted", 130)

    return run


# -- output ---------------------------------------------------------------------------------------


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums and datetimes as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: to_jsonable(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    print(json.dumps(to_jsonable(value), indent=2))


def print_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    cells = [list(header), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[column]) for row in cells) for column in range(len(header))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def print_listing(
    items: Sequence[T],
    *,
    as_json: bool,
    header: Sequence[str],
    row: Callable[[T], Sequence[object]],
) -> None:
    """``ls`` output: the items as JSON, or a table of one ``row(item)`` each."""
    if as_json:
        print_json(items)
    else:
        print_table(header, (row(item) for item in items))


def format_time(moment: datetime | None) -> str:
    """``2025-01-02 03:04:05``, or ``-`` for a moment that has not come."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
