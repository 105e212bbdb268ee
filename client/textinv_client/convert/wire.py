"""What every conversion shares: enum tables, proto3's "zero means unset", timestamps, and
copying the fields that a dataclass and a message spell alike."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

E = TypeVar("E")
# A protobuf enum type (an int subclass in the generated stubs).
P = TypeVar("P", bound=int)
D = TypeVar("D", bound="DataclassInstance")
R = TypeVar("R")


def invert(table: dict[E, P]) -> dict[int, E]:
    return {number: member for member, number in table.items()}


def enum_to_pb(table: dict[E, P], value: E | None, unspecified: P) -> P:
    # None is the enum's UNSPECIFIED zero: "the server's default".
    return unspecified if value is None else table[value]


def enum_from_pb(table: dict[int, E], number: int, what: str) -> E | None:
    if number == 0:
        return None
    if number not in table:
        raise ValueError(f"unknown {what} {number} from the server; is the client older?")
    return table[number]


def or_none(value: int) -> int | None:
    # proto3 scalars use 0 for "not set".
    return value if value else None


def optional(message: Message, name: str) -> Any:
    """An ``optional`` field's value, or None when the sender left it unset."""
    return getattr(message, name) if message.HasField(name) else None


def oneof_from_pb(
    message: Message, oneof: str, converters: Mapping[str, Callable[[Any], R]], what: str
) -> R:
    """The set member of a stream message's ``oneof``, converted; ValueError for none or one this
    client does not know."""
    kind = message.WhichOneof(oneof)
    if kind not in converters:
        raise ValueError(f"{what} message carries no known {oneof} (got {kind!r})")
    return converters[kind](getattr(message, kind))


def timestamp_to_pb(when: datetime | None, target: Timestamp) -> None:
    if when is not None:
        target.FromDatetime(when)


def timestamp_from_pb(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=timezone.utc)


def message_fields(value: DataclassInstance, *, skip: Iterable[str] = ()) -> dict[str, Any]:
    """``value``'s fields by name, for a message whose fields are spelled the same."""
    left_out = set(skip)
    return {
        item.name: getattr(value, item.name)
        for item in dataclasses.fields(value)
        if item.name not in left_out
    }


def from_message(cls: type[D], message: Message, **converted: Any) -> D:
    """``cls`` from ``message``'s fields of the same names; ``converted`` gives the fields that
    need more than a copy (None for unset, tuples for repeated fields, timestamps)."""
    copied = {
        item.name: getattr(message, item.name)
        for item in dataclasses.fields(cls)
        if item.name not in converted
    }
    return cls(**copied, **converted)
