"""Command-line flags derived from a frozen config dataclass, so no entry point copies them by hand.

A config field opts in with ``metadata=flag("help text")``; its type decides the flag's shape::

    @dataclass(frozen=True)
    class Settings:
        steps: int = field(default=30, metadata=flag("denoising steps"))
        precision: Precision = field(default=Precision.FP32, metadata=flag("model precision"))
        flip: bool = field(default=True, metadata=flag("no horizontal flips", name="--no-flip"))

    add_flags(parser, Settings)                 # --steps N, --precision {fp32,fp16,bf16}, --no-flip
    settings = from_flags(Settings, parser.parse_args())

``int``, ``float``, ``str`` and ``Path`` fields take one value (``X | None`` too, default None); a
:class:`~textinv_client.choices.Choice` takes one of its spellings and shows them; ``bool`` is a
switch (``--x`` sets True, or ``name="--no-x"`` on a field that defaults to True sets False);
``tuple[X, X]`` takes two values and ``tuple[X, ...]`` is repeatable (``--x a --x b``), or takes
its values after one flag with ``nargs="*"`` or ``"+"`` (``--x a b``). ``parse=`` replaces the
type's parser with one that also checks the value (``parse=positive_int``; it raises
``argparse.ArgumentTypeError`` naming the value). The flag's dest is always the field's name; a
``group`` title the parser already has is that group, so flags can join hand-made ones.
Torch-free, like the rest of the client distribution, so every package uses it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from textinv_client.choices import Choice

T = TypeVar("T")
_KEY = "textinv.flag"


@dataclass(frozen=True)
class Flag:
    """How one config field appears on the command line."""

    help: str | None
    name: str | None = None  # "--vectors"; default: "--" + the field's name, dashed
    metavar: str | tuple[str, ...] | None = None  # a tuple names each of nargs values
    group: str | None = None  # an argument group's title, for --help
    parse: Callable[[str], Any] | None = None  # checks and converts one value; default: the type
    nargs: str | None = None  # "*" or "+": a tuple[X, ...] field's values follow one flag


def flag(
    help: str | None = None,
    *,
    name: str | None = None,
    metavar: str | tuple[str, ...] | None = None,
    group: str | None = None,
    parse: Callable[[str], Any] | None = None,
    nargs: str | None = None,
) -> dict[str, Flag]:
    """Field metadata that makes the field a flag: ``field(default=..., metadata=flag(...))``."""
    return {_KEY: Flag(help, name, metavar, group, parse, nargs)}


def flag_fields(cls: type) -> list[tuple[dataclasses.Field[Any], Flag, Any]]:
    """``(field, flag, resolved type)`` for every field of ``cls`` that is a flag, in order."""
    hints = typing.get_type_hints(cls)
    return [
        (item, item.metadata[_KEY], hints[item.name])
        for item in dataclasses.fields(cls)
        if _KEY in item.metadata
    ]


def flag_name(item: dataclasses.Field[Any], spec: Flag) -> str:
    return spec.name or "--" + item.name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    required: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    skip: Iterable[str] = (),
) -> None:
    """Add one flag per flagged field of ``cls``; ``defaults`` override the fields' own."""
    required, skip, defaults = set(required), set(skip), dict(defaults or {})
    for item, spec, hint in flag_fields(cls):
        if item.name in skip:
            continue
        target: Any = parser if spec.group is None else _argument_group(parser, spec.group)
        default = defaults.get(item.name, _field_default(item))
        options = _argument_options(hint, default, spec, flag_name(item, spec))
        if item.name in required:
            options.pop("default", None)
            options["required"] = True
        target.add_argument(flag_name(item, spec), dest=item.name, **options)


def flag_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The flagged fields' values in ``args``, converted to the fields' types."""
    values = {}
    for item, _spec, _hint in flag_fields(cls):
        if hasattr(args, item.name):
            value = getattr(args, item.name)
            values[item.name] = tuple(value) if isinstance(value, list) else value
    return values


def from_flags(cls: Callable[..., T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed flags; ``overrides`` set fields that are not flags."""
    return cls(**{**flag_values(typing.cast(type, cls), args), **overrides})


def _argument_group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The parser's group titled ``title``, made on first use."""
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def _field_default(item: dataclasses.Field[Any]) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return None


def _argument_options(hint: Any, default: Any, spec: Flag, name: str) -> dict[str, Any]:
    """argparse options for a field of type ``hint`` (Optional unwrapped)."""
    hint = without_none(hint)
    options: dict[str, Any] = {"help": spec.help, "default": default}
    if spec.metavar is not None:
        options["metavar"] = spec.metavar
    if hint is bool:
        # "--no-x" on a field that defaults to True stores False; "--x" stores True.
        options["action"] = "store_false" if name.startswith("--no-") else "store_true"
        return options
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        options["type"] = _checked(spec.parse) or _parser_for(arguments[0])
        _show_choices(options, arguments[0])
        if spec.nargs:  # --x a b: None (unset) stays None
            options.update(nargs=spec.nargs, default=None if default is None else list(default))
        else:  # --x a --x b
            options.update(action="append", default=list(default or ()))
        return options
    if origin is tuple:
        options.update(nargs=len(arguments), type=_checked(spec.parse) or _parser_for(arguments[0]))
        options["default"] = None if default is None else list(default)
        return options
    options["type"] = _checked(spec.parse) or _parser_for(hint)
    _show_choices(options, hint)
    return options


def _checked(parse: Callable[[str], Any] | None) -> Callable[[str], Any] | None:
    """``parse`` with a ``ValueError`` turned into argparse's error, its message kept whole."""
    if parse is None:
        return None

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except argparse.ArgumentTypeError:
            raise
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = getattr(parse, "__name__", "value")
    return checked


def _show_choices(options: dict[str, Any], hint: Any) -> None:
    """A ``Choice`` flag shows its spellings in ``--help`` (``{fp32,fp16,bf16}``)."""
    if isinstance(hint, type) and issubclass(hint, Choice):
        options.setdefault("metavar", "{" + ",".join(member.value for member in hint) + "}")


def without_none(hint: Any) -> Any:
    """``X | None`` → ``X``; anything else as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _parser_for(hint: Any) -> Callable[[str], Any]:
    if isinstance(hint, type) and issubclass(hint, Choice):
        return _choice_parser(hint)
    return typing.cast(Callable[[str], Any], hint)


def _choice_parser(choice: type[Choice]) -> Callable[[str], Choice]:
    def parse(text: str) -> Choice:
        try:
            return choice.parse(text)
        except ValueError as error:
            # argparse prints an ArgumentTypeError's message as it is, after the flag's name;
            # "invalid choice" is argparse's own wording for every other closed choice.
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} ({error})") from None

    parse.__name__ = choice.__choice_name__
    return parse
