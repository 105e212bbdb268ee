"""A concept's token: its one spelling (NFKC) and what it may be.

A token is a new word of a prompt (``<cat-toy>``); with K vectors it expands to K names
(``<cat-toy>``, ``<cat-toy>_1``, ...), none of which may be a word the tokenizer knows.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection

from textinv.errors import InvalidInputError, quote

MAX_TOKEN_LENGTH = 64
# K: vectors per concept, as the trainer allows them (each takes one of a prompt's 75 positions).
MAX_VECTORS = 16


def normalize_token(token: str) -> str:
    """The one spelling of a token: Unicode NFKC (full-width ``＜ｃａｔ＞`` is ``<cat>``)."""
    return unicodedata.normalize("NFKC", token)


def check_token(token: str, vocabulary: Collection[str] = (), num_vectors: int = 1) -> str:
    """Return ``token`` NFKC-normalized, or raise: 1-64 printable characters, no whitespace,
    none of its K names in the vocabulary. Messages quote only a short prefix of it.
    """
    if not isinstance(token, str):
        raise InvalidInputError(f"token must be text, got {type(token).__name__}")
    if not 1 <= num_vectors <= MAX_VECTORS:
        raise InvalidInputError(f"num_vectors must be 1..{MAX_VECTORS}, got {num_vectors}")
    # NFKC may expand a character up to 18-fold: bound the input before normalizing it.
    normalized = normalize_token(token) if len(token) <= MAX_TOKEN_LENGTH else token
    if not 1 <= len(normalized) <= MAX_TOKEN_LENGTH:
        raise InvalidInputError(
            f"token {quote(token)} must be 1 to {MAX_TOKEN_LENGTH} characters long"
        )
    # Whitespace (Z*) and control, format, private or unassigned characters (C*).
    if any(unicodedata.category(char)[0] in "ZC" for char in normalized):
        raise InvalidInputError(
            f"token {quote(token)} must not contain whitespace or control characters"
        )
    names = [normalized] + [f"{normalized}_{i}" for i in range(1, num_vectors)]
    taken = [name for name in names if _in_vocabulary(name, vocabulary)]
    if taken:
        raise InvalidInputError(
            f"token {quote(normalized)} collides with the tokenizer's vocabulary "
            f"({', '.join(taken)}); choose a new word such as '<my-concept>'"
        )
    return normalized


def _in_vocabulary(name: str, vocabulary: Collection[str]) -> bool:
    """Whether ``name`` is a word of the tokenizer, in any case: prompts match tokens
    case-insensitively, and CLIP's vocabulary is lower-case, so ``Photo`` would take ``photo``
    from every prompt."""
    return any(
        spelling in vocabulary or f"{spelling}</w>" in vocabulary
        for spelling in (name, name.lower())
    )
