"""Closed choices spelled as text: a flag's, a config's or the wire's spelling (STYLE: a ``str``
Enum for each closed choice), parsed with one error that names the bad value and the choices."""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

from textinv.errors import InvalidInputError

C = TypeVar("C", bound="Choice")


class Choice(str, Enum):
    """Subclasses set ``__choice_name__`` (``"scheduler"``) for the error message."""

    __choice_name__ = "value"

    @classmethod
    def parse(cls: type[C], value: str | C) -> C:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(member.value for member in cls)
            raise InvalidInputError(
                f"unknown {cls.__choice_name__} {value!r}; choose one of {known}"
            ) from None
