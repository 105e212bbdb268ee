"""The error types every entry point maps to a user-facing answer.

Each is raised with a message that names the bad value. Entry points map them in one place: the
CLI prints ``error: <message>``; the gRPC server maps them to status codes.
"""

from __future__ import annotations


class TextInvError(Exception):
    """Base of every error this project raises on purpose."""


class InvalidInputError(TextInvError, ValueError):
    """Bad input from a caller: a value, a file or a request that we refuse."""


class ModelLoadError(InvalidInputError):
    """A base model folder is missing, incomplete or of an unsupported kind."""


class ConceptFileError(InvalidInputError):
    """A concept file is unreadable, malformed, or does not fit the model."""


class NotFoundError(TextInvError, LookupError):
    """A named thing (a concept, a job) does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class UnknownConceptError(NotFoundError):
    """A prompt or a request names a concept that is not registered."""

    def __init__(self, tokens: list[str] | str) -> None:
        self.tokens = [tokens] if isinstance(tokens, str) else list(tokens)
        # A prompt may hold many long <words>: name a few, each by a short prefix.
        names = ", ".join(quote(token) for token in self.tokens[:5])
        more = f" and {len(self.tokens) - 5} more" if len(self.tokens) > 5 else ""
        super().__init__(f"unknown concept {names}{more}: register it first")


class AlreadyExistsError(TextInvError):
    """Creating something that exists already, without asking to replace it."""


class OverloadedError(TextInvError):
    """The server is at a configured limit (queue, concurrent jobs) and refuses at once."""


class PermissionDeniedError(TextInvError):
    """The caller's API key may not do this (a generate-only key managing concepts or jobs)."""


class StoreUnavailableError(TextInvError):
    """The shared store (PostgreSQL) cannot be reached; the call may be retried."""


class CancelledError(TextInvError):
    """Work stopped because its caller cancelled it or its deadline passed."""


def quote(value: object, limit: int = 40) -> str:
    """``value`` for an error message: its ``repr``, cut to its first ``limit`` characters.

    A request may carry megabytes of text; a message quotes only enough to recognize it, and
    says how long the whole was (``'aaaa…' (1000000 characters)``).
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}… ({len(text)} characters)"


class StorageFullError(OverloadedError):
    """The disk (or a job's byte budget) is full: the write was refused and rolled back."""


class DataFolderLockedError(TextInvError):
    """Another server process uses the data folder (its lock file is held)."""
