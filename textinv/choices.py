"""How a caller's spelling of a closed choice becomes its member, as bad input when it is none.

The choices themselves are ``textinv_client.choices`` (one ``str`` Enum each, shared with the thin
client). ``parse_input`` is ``Choice.parse`` for values that come from a caller: the error is also
an ``InvalidInputError``, so the command line and the gRPC edge answer it as bad input, naming the
value. A frozen config calls ``coerce_choices(self)`` in ``__post_init__``: callers may spell a
choice as a string, and the config holds the member from then on, so nothing inside parses it
again.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from textinv.errors import InvalidInputError
from textinv_client.choices import Choice, UnknownChoiceError
from textinv_client.flags import without_none

C = TypeVar("C", bound=Choice)


class InvalidChoiceError(InvalidInputError, UnknownChoiceError):
    """A caller's value that is not one of a closed choice's members."""


def parse_input(choice: type[C], value: str | C) -> C:
    """``choice.parse(value)``; an unknown value raises ``InvalidChoiceError`` naming it."""
    try:
        return choice.parse(value)
    except UnknownChoiceError as error:
        raise InvalidChoiceError(str(error)) from None


def coerce_choices(config: Any) -> None:
    """Turn each string in a ``Choice``, ``Choice | None`` or ``tuple[Choice, ...]`` field of the
    frozen dataclass ``config`` into its member; an unknown spelling raises
    ``InvalidChoiceError``."""
    for name, choice, many in _choice_fields(type(config)):
        value = getattr(config, name)
        if value is None:
            continue
        if many:
            value = tuple(parse_input(choice, item) for item in value)
        elif not isinstance(value, choice):
            value = parse_input(choice, value)
        object.__setattr__(config, name, value)


# (field name, its Choice, whether the field is a tuple of them)
ChoiceField = tuple[str, type[Choice], bool]


def _choice_fields(cls: type) -> tuple[ChoiceField, ...]:
    """The fields of ``cls`` typed with a choice; read once per class."""
    if cls not in _CHOICE_FIELDS:
        _CHOICE_FIELDS[cls] = _find_choice_fields(cls)
    return _CHOICE_FIELDS[cls]


_CHOICE_FIELDS: dict[type, tuple[ChoiceField, ...]] = {}


def _find_choice_fields(cls: type) -> tuple[ChoiceField, ...]:
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        hint = without_none(hints[item.name])
        arguments = typing.get_args(hint)
        many = typing.get_origin(hint) is tuple and len(arguments) == 2 and arguments[1] is ...
        if many:
            hint = arguments[0]
        if isinstance(hint, type) and issubclass(hint, Choice):
            found.append((item.name, hint, many))
    return tuple(found)
