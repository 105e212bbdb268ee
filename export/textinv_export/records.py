"""Frozen records to JSON-ready dicts and back, field by field, each converted by its type.

The manifest stores flat records (a file, an engine, the model's facts, a tensor's spec). Instead
of a hand-written ``to_dict``/``from_dict`` pair per class, a record subclasses :class:`Record`;
its fields may be ``str``, ``int``, ``float`` or ``bool``, a
:class:`~textinv_client.choices.Choice` (stored as its value), ``X | None`` (absent or null reads
as None), ``tuple[X, ...]`` (stored as a list), or another record (anything with ``from_dict``).
A union of several kinds (``int | str``) is stored as JSON keeps it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from textinv_client.choices import Choice

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for a frozen dataclass: ``to_dict`` and ``from_dict`` from its fields' types."""

    def to_dict(self) -> dict[str, Any]:
        return {item.name: _plain(getattr(self, item.name)) for item in _fields(self)}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Raises ``KeyError``, ``TypeError`` or ``ValueError`` on a malformed ``data``."""
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for item in _fields(cls):
            hint, optional = _unwrap_optional(hints[item.name])
            if optional and data.get(item.name) is None:
                values[item.name] = None
            else:
                values[item.name] = _typed(hint, data[item.name])
        return cls(**values)


def coerce(record: object, **parsers: Callable[[Any], Any]) -> None:
    """In a frozen dataclass's ``__post_init__``: set each named field to ``parser(value)``, so
    callers may pass ``"fp16"`` where the field is typed ``Precision``."""
    for name, parse in parsers.items():
        object.__setattr__(record, name, parse(getattr(record, name)))


def _fields(record: Any) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(record)


def _plain(value: Any) -> Any:
    if isinstance(value, Choice):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "to_dict"):  # a Record, or a class with its own pair
        return value.to_dict()
    return value


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(hint, False)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [argument for argument in typing.get_args(hint) if argument is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return hint, False


def _typed(hint: Any, value: Any) -> Any:
    """``value`` read from JSON, as a field of type ``hint`` holds it."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return tuple(_typed(typing.get_args(hint)[0], item) for item in value)
    if origin in (typing.Union, types.UnionType):
        return value  # int | str and the like: JSON already keeps the kind
    if isinstance(hint, type) and issubclass(hint, Choice):
        return hint.parse(value)
    if hasattr(hint, "from_dict"):
        return hint.from_dict(value)
    return hint(value)  # str, int, float, bool
