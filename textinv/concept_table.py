"""Which registered tokens a prompt names: whole words only, case-insensitively, and at a cost that
does not grow with the number of registered concepts.

**Words.** A word character is a letter, a digit, a combining mark or ``_``; a ``-`` between two
word characters is one too, so compounds such as ``cat-toy`` or ``bad-hands-5`` are one word. A
token matches where the characters just outside it are not word characters (or the prompt ends
there). So ``tography`` never matches inside "a photography of a cat", ``<x>`` does not match in
"a<x>" (a letter touches it), and ``<cat-toy>`` matches in "a <cat-toy>,", "(<cat-toy>)",
"<dog-style><cat-toy>" and "<cat-toy>-like".

**Case and Unicode.** Tokens and prompts are compared NFKC-normalized and lower-cased, the way
CLIP's tokenizer lower-cases prompts, so ``EasyNegative`` matches "easynegative", and a
full-width or ligature spelling of a token is that token.

**Cost.** A ``ConceptTable`` is immutable: the registry builds a new one when a concept is added
or removed (copy-on-write), so a request takes the current one without copying it. Matching scans
the prompt's candidate spans (starts after a non-word character, at most the longest token's
length) against a dict, so a request's cost depends on its prompt, not on the registry's size.
Where spans overlap, the leftmost wins, then the longest.
"""

from __future__ import annotations

import bisect
import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping

import torch

from textinv.errors import InvalidInputError

_CHUNKS = re.compile(r"\S+")


def fold(text: str) -> str:
    """The form in which tokens and prompts are compared: NFKC, then lower-cased."""
    return unicodedata.normalize("NFKC", text).lower()


class TokenIndex:
    """Folded token → registered token, with the bounds that keep a prompt scan short."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        by_key: dict[str, str] = {}
        for token in sorted(tokens):  # of two tokens that fold alike, the first in order wins
            by_key.setdefault(fold(token), token)
        self._by_key = by_key
        self._bounds()

    def _bounds(self) -> None:
        self.max_chars = max(map(len, self._by_key), default=0)
        self._heads = frozenset(key[:1] for key in self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def find(self, text: str) -> str | None:
        """The registered token that ``text`` spells (in any case or compatibility form)."""
        return self._by_key.get(fold(text))

    def added(self, token: str) -> TokenIndex:
        key = fold(token)
        copy = TokenIndex()
        copy._by_key = {**self._by_key, key: token}
        copy.max_chars = max(self.max_chars, len(key))
        copy._heads = self._heads | {key[:1]}
        return copy

    def removed(self, token: str) -> TokenIndex:
        copy = TokenIndex()
        copy._by_key = {k: v for k, v in self._by_key.items() if v != token}
        copy._bounds()
        return copy

    def split(self, prompt: str) -> list[tuple[str, str | None]]:
        """``'a <x> dog'`` → ``[('a ', None), ('<x>', '<x>'), (' dog', None)]``: pieces of the
        NFKC-normalized prompt, each plain text or the registered token it spells."""
        text = unicodedata.normalize("NFKC", prompt)
        pieces: list[tuple[str, str | None]] = []
        last = 0
        if self._by_key:
            for chunk in _CHUNKS.finditer(text):
                for start, end, token in self._matches(chunk.group()):
                    start, end = start + chunk.start(), end + chunk.start()
                    pieces += [(text[last:start], None), (text[start:end], token)]
                    last = end
        pieces.append((text[last:], None))
        return [(piece, token) for piece, token in pieces if piece]

    def _matches(self, chunk: str) -> Iterator[tuple[int, int, str]]:
        """Leftmost-longest whole-word matches in one run of non-space characters."""
        word = _word_characters(chunk)
        n = len(chunk)
        ends = [e for e in range(1, n + 1) if e == n or not word[e]]  # ascending
        start = 0
        while start < n:
            if (start == 0 or not word[start - 1]) and chunk[start].lower()[:1] in self._heads:
                end = self._longest_at(chunk, start, ends)
                if end:
                    yield start, end, self._by_key[chunk[start:end].lower()]
                    start = end
                    continue
            start += 1

    def _longest_at(self, chunk: str, start: int, ends: list[int]) -> int:
        """The end of the longest token at ``start``, or 0: at most ``max_chars`` ends looked up."""
        last = bisect.bisect_right(ends, start + self.max_chars)
        for end in reversed(ends[bisect.bisect_right(ends, start) : last]):
            if chunk[start:end].lower() in self._by_key:
                return end
        return 0


def candidate_keys(prompt: str, max_chars: int, limit: int | None = None) -> set[str]:
    """Every span of ``prompt`` that a registered token could be, as ``TokenIndex.split`` would
    look it up: NFKC-normalized and lower-cased, starting and ending on a word boundary, at most
    ``max_chars`` long. A registry that does not hold every token looks these up in its store.

    A prompt of words and spaces has about one per word; a run of punctuation without spaces has
    up to ``max_chars`` per character, so past ``limit`` keys this stops and raises
    ``InvalidInputError`` (before the work grows with them).
    """
    text = unicodedata.normalize("NFKC", prompt)
    keys: set[str] = set()
    for match in _CHUNKS.finditer(text):
        chunk = match.group()
        word = _word_characters(chunk)
        ends = [e for e in range(1, len(chunk) + 1) if e == len(chunk) or not word[e]]
        for start in range(len(chunk)):
            if start == 0 or not word[start - 1]:
                first = bisect.bisect_right(ends, start)
                last = bisect.bisect_right(ends, start + max_chars)
                keys.update(chunk[start:end].lower() for end in ends[first:last])
                if limit is not None and len(keys) > limit:
                    raise InvalidInputError(
                        f"the prompt holds more than {limit} places where a concept's token could "
                        "stand (long runs of punctuation without spaces); add spaces"
                    )
    return keys


def _word_characters(chunk: str) -> list[bool]:
    """Per character of ``chunk``: whether it belongs to a word (see the module docstring)."""
    word = [_is_word_character(ch) for ch in chunk]
    for i in range(1, len(chunk) - 1):
        if chunk[i] == "-" and word[i - 1] and _is_word_character(chunk[i + 1]):
            word[i] = True
    return word


@functools.lru_cache(maxsize=8192)
def _is_word_character(ch: str) -> bool:
    return ch == "_" or unicodedata.category(ch)[0] in "LNM"


class ConceptTable(Mapping[str, torch.Tensor]):
    """An immutable ``{token: vectors [K, D]}`` with its ``TokenIndex``; changes make new tables."""

    def __init__(
        self, vectors: Mapping[str, torch.Tensor] | None = None, index: TokenIndex | None = None
    ) -> None:
        self._vectors: dict[str, torch.Tensor] = dict(vectors or {})
        self.index = index if index is not None else TokenIndex(self._vectors)

    def __getitem__(self, token: str) -> torch.Tensor:
        return self._vectors[token]

    def __iter__(self) -> Iterator[str]:
        return iter(self._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def with_concept(self, token: str, vectors: torch.Tensor) -> ConceptTable:
        index = self.index if token in self._vectors else self.index.added(token)
        return ConceptTable({**self._vectors, token: vectors}, index)

    def without(self, token: str) -> ConceptTable:
        if token not in self._vectors:
            return self
        rest = {t: v for t, v in self._vectors.items() if t != token}
        return ConceptTable(rest, self.index.removed(token))


def as_table(concepts: Mapping[str, torch.Tensor]) -> ConceptTable:
    """``concepts`` itself when it is a table already (the server's case: no copy), else one."""
    return concepts if isinstance(concepts, ConceptTable) else ConceptTable(concepts)
