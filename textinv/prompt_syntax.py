"""Automatic1111's prompt syntax: emphasis weights, ``BREAK``, and ComfyUI's ``embedding:name``.

``parse_emphasis`` reads a prompt the way Automatic1111's ``parse_prompt_attention`` does:

- ``(text)`` multiplies the weight of ``text`` by 1.1, ``[text]`` divides it by 1.1, and groups
  nest: ``((text))`` is 1.21;
- ``(text:1.3)`` multiplies by 1.3 instead of 1.1;
- ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are the literal characters;
- a bracket left open applies to the rest of the prompt, a closer with no opener is text;
- ``BREAK`` (upper case, a word of its own) ends the current 75-token chunk.

The result is a list of groups (the text between ``BREAK`` s), each a list of
``(text, weight)`` runs with neighbours of equal weight merged. The weights are applied after the
text encoder (``textinv.prompts.apply_emphasis``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from textinv.errors import InvalidInputError, UnknownConceptError

# A weight is 1.1 per round bracket, 1/1.1 per square one (Automatic1111's constants).
ROUND_FACTOR = 1.1
SQUARE_FACTOR = 1 / 1.1
# Weights past this magnitude only make NaN pixels: ((((...)))) nested a thousand times is 1e41.
MAX_WEIGHT = 100.0

_PIECE = re.compile(
    r"""
    (?P<escaped>\\[()\[\]\\])               # a literal bracket or backslash
    | (?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))   # ":1.3)" closes a round group
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+ | [\\:])      # anything else, a lone backslash or colon included
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
# ComfyUI names an embedding file by ``embedding:NAME``, with or without its extension.
_EMBEDDING = re.compile(r"\bembedding:([^\s,()\[\]:]+)")
_EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")

Run = tuple[str, float]  # (text, weight)


def parse_emphasis(prompt: str) -> list[list[Run]]:
    """The prompt's runs of equal weight, grouped between ``BREAK`` s (at least one group)."""
    runs: list[list[str | float]] = []  # [text, weight], weights scaled in place
    breaks: list[int] = []  # indexes into runs where a new group starts
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] = float(run[1]) * factor

    for match in _PIECE.finditer(prompt):
        if match["escaped"]:
            runs.append([match["escaped"][1], 1.0])
        elif match["open"]:
            (round_open if match["open"] == "(" else square_open).append(len(runs))
        elif match["weight"] and round_open and _is_number(match["number"]):
            scale(round_open.pop(), float(match["number"]))
        elif match["close"] == ")" and round_open:
            scale(round_open.pop(), ROUND_FACTOR)
        elif match["close"] == "]" and square_open:
            scale(square_open.pop(), SQUARE_FACTOR)
        else:
            for index, part in enumerate(_BREAK.split(match[0])):
                if index:
                    breaks.append(len(runs))
                runs.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND_FACTOR)
    for start in square_open:
        scale(start, SQUARE_FACTOR)
    return _grouped([(str(text), float(weight)) for text, weight in runs], breaks)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _grouped(runs: list[Run], breaks: list[int]) -> list[list[Run]]:
    """Split at the ``BREAK`` indexes, drop empty runs, merge equal neighbours, check weights."""
    groups: list[list[Run]] = []
    for start, end in zip([0, *breaks], [*breaks, len(runs)], strict=True):
        merged: list[Run] = []
        for text, weight in runs[start:end]:
            if not text:
                continue
            _check_weight(text, weight)
            if merged and merged[-1][1] == weight:
                merged[-1] = (merged[-1][0] + text, weight)
            else:
                merged.append((text, weight))
        groups.append(merged)
    return groups


def _check_weight(text: str, weight: float) -> None:
    if not (math.isfinite(weight) and abs(weight) <= MAX_WEIGHT):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InvalidInputError(
            f"prompt: the weight of {shown!r} is {weight:g}; weights must be within ±{MAX_WEIGHT:g}"
        )


def resolve_embedding_names(prompt: str, find: Callable[[str], str | None]) -> str:
    """ComfyUI's ``embedding:NAME`` → the registered token ``NAME`` or ``<NAME>``.

    ``find`` is the registry's lookup (``TokenIndex.find``: case-folded, O(1)). The file
    extension is optional (``embedding:cat-toy.safetensors``). A name that matches no registered
    concept raises ``UnknownConceptError`` naming it as written.
    """

    def token_for(match: re.Match[str]) -> str:
        name = _without_suffix(match[1]).rstrip(".")
        token = find(name) or find(f"<{name}>")
        if token is None:
            raise UnknownConceptError([match[0]])
        return f" {token} "

    return _EMBEDDING.sub(token_for, prompt)


def embedding_names(prompt: str) -> list[str]:
    """The ``embedding:NAME`` names of a prompt, as written (limits count them as concepts)."""
    return _EMBEDDING.findall(prompt)


def _without_suffix(name: str) -> str:
    for suffix in _EMBEDDING_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
