"""Host-side prompt handling: a prompt with learned words → the text encoder's ``inputs_embeds``.

DESIGN decision 1: learned words never enter a vocabulary. A prompt is split on the registered
concept tokens, each matched as a whole word, case-insensitively (``textinv.concept_table``); the
text between them goes through the base tokenizer; each concept occupies K consecutive positions
(diffusers' ``<tok> <tok>_1 ...`` expansion). The embeddings are the base table's rows with the
concept rows spliced in. The cost of a prompt does not depend on how many concepts exist.

Two syntaxes (``PromptSyntax``):

- ``plain`` (the default): one 77-token window. Prompts over it are truncated as diffusers
  truncates them (the first 75 tokens between the start and end tokens are kept).
- ``a1111``: Automatic1111's emphasis, ``BREAK`` and ComfyUI's ``embedding:name``
  (``textinv.prompt_syntax``), and long prompts as Automatic1111 encodes them: chunks of 75 tokens,
  each wrapped in its own start and end tokens and encoded separately, the hidden states
  concatenated along the sequence (``[B, 77·C, D]``). A concept's K vectors never straddle two
  chunks. The emphasis weights are applied to the encoder's output (``apply_emphasis``).

Text past the budget carries a warning naming what was dropped, so a server can pass it on.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerBase

from textinv.concept_table import ConceptTable, TokenIndex, as_table
from textinv.errors import ConceptFileError, UnknownConceptError
from textinv.prompt_syntax import parse_emphasis, resolve_embedding_names
from textinv_client.choices import PromptSyntax

MAX_LENGTH = 77
CHUNK_TOKENS = MAX_LENGTH - 2  # the tokens between a chunk's start and end tokens
# Automatic1111 encodes any number of chunks; three (225 tokens) bound a request's cost.
DEFAULT_MAX_CHUNKS = 3
# apply_emphasis leaves a chunk unrescaled when its mean is below this fraction of its magnitude.
MEAN_FLOOR = 1e-3
# What a placeholder looks like in a prompt: ``<cat-toy>``. Such a word that is not registered
# is an error rather than text, so a typo never silently generates the wrong thing.
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


@dataclass(frozen=True)
class ConceptSlot:
    """Position ``position`` of a prompt holds vector ``index`` of concept ``token``."""

    position: int
    token: str
    index: int


# What fills a chunk: a text token id, or one vector of a concept.
Item = int | ConceptSlot


@dataclass(frozen=True)
class TokenizedPrompt:
    """One prompt as C chunks of 77 ids (C = 1 in the plain syntax); concept positions hold the
    pad id and are listed in ``slots`` (positions in the whole ``77·C`` sequence)."""

    input_ids: tuple[int, ...]  # 77·C
    slots: tuple[ConceptSlot, ...]
    eos_positions: tuple[int, ...]  # per chunk, within its 77
    warnings: tuple[str, ...] = ()
    weights: tuple[float, ...] | None = None  # 77·C emphasis weights; None: every weight 1

    @property
    def chunks(self) -> int:
        return len(self.eos_positions)


@dataclass(frozen=True)
class PromptEmbeddings:
    """The text encoder's inputs for a batch of prompts, C chunks each."""

    inputs_embeds: torch.Tensor  # [B, 77·C, D]
    eos_positions: torch.Tensor  # [B·C] int64: each chunk's end-of-text position in its 77
    warnings: tuple[str, ...] = ()
    weights: torch.Tensor | None = None  # [B, 77·C] emphasis; None when every weight is 1

    @property
    def chunks(self) -> int:
        return int(self.inputs_embeds.shape[1]) // MAX_LENGTH

    def encoder_rows(self) -> torch.Tensor:
        """``[B·C, 77, D]``: every chunk its own row of the text encoder's batch."""
        return self.inputs_embeds.reshape(-1, MAX_LENGTH, self.inputs_embeds.shape[-1])


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
        self,
        prompts: Sequence[str],
        concepts: Mapping[str, torch.Tensor],
        syntax: PromptSyntax = PromptSyntax.PLAIN,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
    ) -> PromptEmbeddings:
        """``inputs_embeds [B, 77·C, D]``: base rows, with each concept's rows at its slots.

        Under ``a1111`` every prompt is padded with empty chunks to the longest one's C, as
        Automatic1111 pads the conditional and unconditional halves. Pass a ``ConceptTable``
        (the server's registry snapshot) to reuse its index; any other mapping is indexed here.
        """
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be at least 1, got {max_chunks}")
        table = as_table(concepts)
        rows = _row_count(table)
        if syntax is PromptSyntax.A1111:
            tokenized = [self._tokenize_a1111(p, table.index, rows, max_chunks) for p in prompts]
            tokenized = self._padded(tokenized)
        else:
            tokenized = [self._tokenize(p, table.index, rows) for p in prompts]
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
        budget = CHUNK_TOKENS
        warnings = (self._truncation_warning(content[budget:], 1),) if len(content) > budget else ()
        return self._layout([content[:budget]], warnings)

    def _tokenize_a1111(
        self, prompt: str, index: TokenIndex, num_vectors: Callable[[str], int], max_chunks: int
    ) -> TokenizedPrompt:
        """Emphasis, ``BREAK`` and ``embedding:name`` read; chunks of 75, at most ``max_chunks``."""
        groups = parse_emphasis(resolve_embedding_names(prompt, index.find))
        if len(groups) > 1 and not groups[-1]:
            groups.pop()  # a trailing BREAK opens no chunk (as in Automatic1111)
        chunks: list[list[tuple[Item, float]]] = []
        for group in groups:
            chunks += _fill_chunks(self._weighted_units(group, index, num_vectors))
        warnings: tuple[str, ...] = ()
        if len(chunks) > max_chunks:
            dropped = [item for chunk in chunks[max_chunks:] for item, _ in chunk]
            warnings = (self._truncation_warning(dropped, max_chunks),)
        kept = chunks[:max_chunks]
        laid_out = self._layout([[item for item, _ in chunk] for chunk in kept], warnings)
        weights = tuple(w for chunk in kept for w in _chunk_weights(chunk))
        return replace(laid_out, weights=weights if any(w != 1.0 for w in weights) else None)

    def _weighted_units(
        self, runs: list[tuple[str, float]], index: TokenIndex, num_vectors: Callable[[str], int]
    ) -> list[list[tuple[Item, float]]]:
        """Each text token a unit of one; each concept a unit of its K vectors (kept together)."""
        units: list[list[tuple[Item, float]]] = []
        for text, weight in runs:
            for piece, token in index.split(text):
                if token is not None:
                    slots = [ConceptSlot(0, token, i) for i in range(num_vectors(token))]
                    units.append([(slot, weight) for slot in slots])
                else:
                    _refuse_unknown_placeholders(piece)
                    units += [[(token_id, weight)] for token_id in self._text_ids(piece)]
        return units

    def _padded(self, tokenized: list[TokenizedPrompt]) -> list[TokenizedPrompt]:
        """Every prompt padded with empty chunks to the longest one's chunk count."""
        most = max((t.chunks for t in tokenized), default=1)
        empty = self._layout([[]], ())
        return [_with_empty_chunks(t, empty, most - t.chunks) for t in tokenized]

    def embed_tokenized(
        self, tokenized: Sequence[TokenizedPrompt], concepts: Mapping[str, torch.Tensor]
    ) -> PromptEmbeddings:
        """Like ``embed``, for prompts tokenized earlier (the trainer tokenizes templates once);
        all with the same number of chunks."""
        ids = torch.tensor([t.input_ids for t in tokenized], dtype=torch.long)  # [B, 77·C]
        embeds = self.table[ids]  # [B, 77·C, D]
        slots = [(b, slot) for b, t in enumerate(tokenized) for slot in t.slots]
        if slots:
            rows = torch.stack([concepts[s.token][s.index] for _, s in slots]).to(embeds.dtype)
            batch_index = torch.tensor([b for b, _ in slots])
            position_index = torch.tensor([s.position for _, s in slots])
            embeds = embeds.index_put((batch_index, position_index), rows)
        eos = torch.tensor([p for t in tokenized for p in t.eos_positions], dtype=torch.long)
        warnings = tuple(w for t in tokenized for w in t.warnings)
        weights = None
        if any(t.weights is not None for t in tokenized):
            weights = torch.tensor([t.weights or [1.0] * len(t.input_ids) for t in tokenized])
        return PromptEmbeddings(embeds, eos, warnings, weights)

    def _tokenize_text(self, text: str) -> tuple[int, ...]:
        if not text.strip():
            return ()
        return tuple(self.tokenizer(text, add_special_tokens=False).input_ids)

    def _layout(self, chunks: list[list[Item]], warnings: tuple[str, ...]) -> TokenizedPrompt:
        """Each chunk (at most 75 items) as ``[start, items..., end, pad...]``, 77 ids."""
        ids: list[int] = []
        slots, eos_positions = [], []
        for content in chunks:
            start = len(ids)
            ids.append(self.bos_id)
            for position, item in enumerate(content, start=start + 1):
                if isinstance(item, ConceptSlot):
                    slots.append(ConceptSlot(position, item.token, item.index))
                    ids.append(self.pad_id)
                else:
                    ids.append(item)
            eos_positions.append(len(ids) - start)
            ids += [self.eos_id] + [self.pad_id] * (start + MAX_LENGTH - len(ids) - 1)
        return TokenizedPrompt(tuple(ids), tuple(slots), tuple(eos_positions), warnings)

    def _truncation_warning(self, dropped: list[Item], chunks: int) -> str:
        text_ids = [item for item in dropped if isinstance(item, int)]
        concepts = sorted({item.token for item in dropped if isinstance(item, ConceptSlot)})
        words = str(self.tokenizer.decode(text_ids)).strip()
        what = ", ".join(filter(None, [repr(words) if words else "", *concepts]))
        budget = (
            f"the text encoder's {MAX_LENGTH}-token budget"
            if chunks == 1
            else f"the {chunks * CHUNK_TOKENS}-token budget ({chunks} chunks of {CHUNK_TOKENS})"
        )
        return f"prompt exceeds {budget}; {len(dropped)} token(s) were dropped: {what}"

    def _check_widths(self, concepts: Mapping[str, torch.Tensor]) -> None:
        for token, vectors in concepts.items():
            if vectors.ndim != 2 or vectors.shape[1] != self.width:
                raise ConceptFileError(
                    f"concept {token!r} has vectors of shape {list(vectors.shape)}; "
                    f"the model's text encoder takes [K, {self.width}]"
                )


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Automatic1111's emphasis on ``last_hidden_state [B, 77·C, D]`` with ``weights [B, 77·C]``:
    each token's hidden state scaled by its weight, then each chunk rescaled so that its mean over
    tokens and width is what it was. (Automatic1111 takes that mean over the batch of one prompt's
    images, whose rows are equal; here it is each row's own.)

    The rescale divides two means; a chunk whose weighted mean is within ``MEAN_FLOOR`` of zero,
    relative to its mean magnitude, keeps its weighted states unrescaled rather than being
    multiplied by a ratio of rounding errors (a layer norm without bias has a mean of about 0).
    """
    if weights is None:
        return hidden
    rows, length, width = hidden.shape
    shape = (rows, length // MAX_LENGTH, MAX_LENGTH, width)
    chunks = hidden.reshape(shape)  # [B, C, 77, D]
    scale = weights.to(hidden.device, hidden.dtype).reshape(*shape[:3], 1)
    original = chunks.mean(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
    weighted = chunks * scale
    current = weighted.mean(dim=(2, 3), keepdim=True)
    magnitude = weighted.abs().mean(dim=(2, 3), keepdim=True)
    defined = (current.abs() > MEAN_FLOOR * magnitude) & (original.abs() > MEAN_FLOOR * magnitude)
    ratio = torch.where(defined, original / current, torch.ones_like(current))
    return (weighted * ratio).reshape(rows, length, width)


def _fill_chunks(units: list[list[tuple[Item, float]]]) -> list[list[tuple[Item, float]]]:
    """Units laid into chunks of at most 75 items; a unit that does not fit where the chunk
    stands starts the next one (a 75-item unit fills one alone). At least one chunk."""
    chunks: list[list[tuple[Item, float]]] = [[]]
    for unit in units:
        if chunks[-1] and len(chunks[-1]) + len(unit) > CHUNK_TOKENS:
            chunks.append([])
        for entry in unit:
            if len(chunks[-1]) == CHUNK_TOKENS:
                chunks.append([])
            chunks[-1].append(entry)
    return chunks


def _chunk_weights(chunk: list[tuple[Item, float]]) -> list[float]:
    """A chunk's 77 weights: 1 for its start token, the items', then 1 for the end and padding."""
    return [1.0, *(w for _, w in chunk), *[1.0] * (MAX_LENGTH - len(chunk) - 1)]


def _with_empty_chunks(
    tokenized: TokenizedPrompt, empty: TokenizedPrompt, count: int
) -> TokenizedPrompt:
    if count == 0:
        return tokenized
    weights = tokenized.weights
    if weights is not None:
        weights = weights + (1.0,) * (MAX_LENGTH * count)
    return replace(
        tokenized,
        input_ids=tokenized.input_ids + empty.input_ids * count,
        eos_positions=tokenized.eos_positions + empty.eos_positions * count,
        weights=weights,
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
