"""Host-side prompt handling: a prompt with learned words → the text encoder's ``inputs_embeds``.

DESIGN decision 1: learned words never enter a vocabulary. A prompt is split on the registered
concept tokens, each matched as a whole word, case-insensitively (``textinv.concept_table``); the
text between them goes through the base tokenizer; each concept occupies K consecutive positions
(diffusers' ``<tok> <tok>_1 ...`` expansion). The embeddings are the base table's rows with the
concept rows spliced in. The cost of a prompt does not depend on how many concepts exist.

Prompts over the 77-token budget are truncated as diffusers truncates them (the first 75 tokens
between the start and end tokens are kept), and the result carries a warning naming what was
dropped, so a server can pass it on to its caller.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from textinv.concept_table import ConceptTable, TokenIndex, as_table
from textinv.errors import ConceptFileError, UnknownConceptError

MAX_LENGTH = 77
# What a placeholder looks like in a prompt: ``<cat-toy>``. Such a word that is not registered
# is an error rather than text, so a typo never silently generates the wrong thing.
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class ConceptSlot:
    """Position ``position`` of a prompt holds vector ``index`` of concept ``token``."""

    position: int
    token: str
    index: int


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt as 77 ids; concept positions hold the pad id and are listed in ``slots``."""

    input_ids: tuple[int, ...]
    slots: tuple[ConceptSlot, ...]
    eos_position: int
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text encoder's inputs for a batch of prompts."""

    inputs_embeds: torch.Tensor  # [B, 77, D]
    eos_positions: torch.Tensor  # [B] int64, where the pooled output is read
    warnings: tuple[str, ...] = ()


class PromptEncoder:
    """Turns prompts into ``inputs_embeds`` with any number of concepts spliced in.

    Concepts are passed per call (``{token: vectors [K, D]}``), so registering or removing one
    changes nothing here. Vectors may require grad: the trainer backprops through the splice.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, token_embedding: torch.Tensor) -> None:
        self.tokenizer = tokenizer
        self.table = token_embedding.detach()  # [V, D], the frozen base rows
        self.bos_id = _required_id(tokenizer, "bos_token_id")
        self.eos_id = _required_id(tokenizer, "eos_token_id")
        pad_id = tokenizer.pad_token_id
        self.pad_id = self.eos_id if pad_id is None else int(pad_id)
        self._text_ids = functools.lru_cache(maxsize=4096)(self._tokenize_text)

    @property
    def width(self) -> int:
        return int(self.table.shape[1])

    def tokenize(self, prompt: str, num_vectors: Mapping[str, int]) -> TokenizedPrompt:
        """Split on concept tokens, tokenize the text between, and lay out 77 positions."""
        return self._tokenize(prompt, TokenIndex(num_vectors), num_vectors.__getitem__)

    def embed(
        self, prompts: Sequence[str], concepts: Mapping[str, torch.Tensor]
    ) -> PromptEmbeddings:
        """``inputs_embeds [B, 77, D]``: base rows, with each concept's rows at its slots.

        Pass a ``ConceptTable`` (the server's registry snapshot) to reuse its index; any other
        mapping is indexed for this call.
        """
        table = as_table(concepts)
        tokenized = [self._tokenize(p, table.index, _row_count(table)) for p in prompts]
        self._check_widths({s.token: table[s.token] for t in tokenized for s in t.slots})
        return self.embed_tokenized(tokenized, table)

    def _tokenize(
        self, prompt: str, index: TokenIndex, num_vectors: Callable[[str], int]
    ) -> TokenizedPrompt:
        content: list[int | ConceptSlot] = []
        for piece, token in index.split(prompt):
            if token is not None:
                content += [ConceptSlot(0, token, i) for i in range(num_vectors(token))]
            else:
                _refuse_unknown_placeholders(piece)
                content += self._text_ids(piece)
        budget = MAX_LENGTH - 2
        warnings = (self._truncation_warning(content[budget:]),) if len(content) > budget else ()
        return self._layout(content[:budget], warnings)

    def embed_tokenized(
        self, tokenized: Sequence[TokenizedPrompt], concepts: Mapping[str, torch.Tensor]
    ) -> PromptEmbeddings:
        """Like ``embed``, for prompts tokenized earlier (the trainer tokenizes templates once)."""
        ids = torch.tensor([t.input_ids for t in tokenized], dtype=torch.long)  # [B, 77]
        embeds = self.table[ids]  # [B, 77, D]
        slots = [(b, slot) for b, t in enumerate(tokenized) for slot in t.slots]
        if slots:
            rows = torch.stack([concepts[s.token][s.index] for _, s in slots]).to(embeds.dtype)
            batch_index = torch.tensor([b for b, _ in slots])
            position_index = torch.tensor([s.position for _, s in slots])
            embeds = embeds.index_put((batch_index, position_index), rows)
        eos = torch.tensor([t.eos_position for t in tokenized], dtype=torch.long)
        warnings = tuple(w for t in tokenized for w in t.warnings)
        return PromptEmbeddings(embeds, eos, warnings)

    def _tokenize_text(self, text: str) -> tuple[int, ...]:
        if not text.strip():
            return ()
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _layout(
        self, content: list[int | ConceptSlot], warnings: tuple[str, ...]
    ) -> TokenizedPrompt:
        ids = [self.bos_id]
        slots = []
        for position, item in enumerate(content, start=1):
            if isinstance(item, ConceptSlot):
                slots.append(ConceptSlot(position, item.token, item.index))
                ids.append(self.pad_id)
            else:
                ids.append(item)
        eos_position = len(ids)
        ids += [self.eos_id] + [self.pad_id] * (MAX_LENGTH - len(ids) - 1)
        return TokenizedPrompt(tuple(ids), tuple(slots), eos_position, warnings)

    def _truncation_warning(self, dropped: list[int | ConceptSlot]) -> str:
        text_ids = [item for item in dropped if isinstance(item, int)]
        concepts = sorted({item.token for item in dropped if isinstance(item, ConceptSlot)})
        words = str(self.tokenizer.decode(text_ids)).strip()
        what = ", ".join(filter(None, [repr(words) if words else "", *concepts]))
        return (
            f"prompt exceeds the text encoder's {MAX_LENGTH}-token budget; "
            f"{len(dropped)} token(s) were dropped: {what}"
        )

    def _check_widths(self, concepts: Mapping[str, torch.Tensor]) -> None:
        for token, vectors in concepts.items():
            if vectors.ndim != 2 or vectors.shape[1] != self.width:
                raise ConceptFileError(
                    f"concept {token!r} has vectors of shape {list(vectors.shape)}; "
                    f"the model's text encoder takes [K, {self.width}]"
                )


def _row_count(table: ConceptTable) -> Callable[[str], int]:
    return lambda token: int(table[token].shape[0])


def _refuse_unknown_placeholders(text: str) -> None:
    unknown = PLACEHOLDER.findall(text)
    if unknown:
        raise UnknownConceptError(sorted(set(unknown)))


def _required_id(tokenizer: PreTrainedTokenizerBase, attribute: str) -> int:
    value = getattr(tokenizer, attribute)
    if value is None:
        raise ValueError(f"the tokenizer has no {attribute.removesuffix('_id')} token")
    return int(value)
