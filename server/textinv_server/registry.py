"""The concept registry: validated concepts in the store, and the ones in use cached in memory.

Registering a concept validates the upload (``textinv.concepts.parse_concept``: format, shape,
dtype, finite values, width, token) and stores it (``Store.put_concept``, which checks, inside its
transaction, that no token of the tenant folds alike and that the tenant has room). Nothing is
re-exported or reloaded: the very next generation, on any replica, finds it.

A replica does not hold every concept. For each request it takes the prompt's candidate words
(``candidate_keys``: every span that a token could be, about one per word) and resolves them:
from a bounded LRU of loaded concepts, from a bounded LRU of words known to name nothing, and
for the rest with one store query. The store announces every change (``StoreEvent``), from any
replica, and the registry forgets what it cached for that word; a ``reset`` (missed changes)
forgets everything. A lookup that races a change caches nothing (``_generation``), so a stale
entry cannot outlive the change's announcement. A request's cost depends on its prompt, not on
how many concepts are registered.

Tokens that differ only in case or Unicode form cannot both be registered: a prompt could not
tell them apart. A stored concept whose file does not match its sha256 (a data folder changed
while the server was stopped) is reported at start, listed in ``damaged`` and left out.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from textinv.concept_fit import Widths, parse_for_model, per_encoder
from textinv.concept_table import ConceptTable, candidate_keys, fold
from textinv.concept_tokens import MAX_TOKEN_LENGTH
from textinv.concepts import Concept, concept_to_bytes
from textinv.errors import ConceptFileError, InvalidInputError, NotFoundError
from textinv.sdxl_text import SdxlConcepts
from textinv_server.store import DEFAULT_TENANT, ConceptRow, Store, StoreEvent

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCEPTS = 10_000
DEFAULT_CACHED_CONCEPTS = 4096  # K ≤ 16 rows of ≤ 2048 floats each: ≤ 512 MiB at the worst
DEFAULT_CACHED_MISSES = 65_536  # words known to name no concept
# A request's candidate words (``candidate_keys``): a 2000-character prompt of words has a few
# hundred; only long runs of punctuation reach this, and such a prompt is refused.
MAX_CANDIDATE_KEYS = 8192
MAX_MISSES_CACHED_PER_REQUEST = 256  # so that no one prompt flushes the others' cached misses

Key = tuple[str, str]  # (tenant, folded token)
V = TypeVar("V")


@dataclass(frozen=True)
class DamagedConcept:
    """A stored concept whose file is missing or does not match its row; never a server path."""

    token: str
    sha256: str
    reason: str
    tenant: str = DEFAULT_TENANT


class ConceptRegistry:
    def __init__(
        self,
        store: Store,
        *,
        widths: Widths,
        vocabulary: Collection[str],
        max_file_bytes: int,
        max_concepts: int = DEFAULT_MAX_CONCEPTS,
        cached_concepts: int = DEFAULT_CACHED_CONCEPTS,
        cached_misses: int = DEFAULT_CACHED_MISSES,
    ) -> None:
        self.store = store
        self.widths = widths  # per text encoder: (D,), or SDXL's (D1, D2)
        self.vocabulary = vocabulary
        self.max_file_bytes = max_file_bytes
        self.max_concepts = max_concepts
        # A shared store's misses are not cached: a word looked up on this replica may be
        # registered on another a moment later, and a client that registers there and generates
        # here must find it at once (one indexed query per request, whatever the count).
        self._cached_concepts = cached_concepts
        self._cached_misses = 0 if store.shared else cached_misses
        self._lock = threading.Lock()
        self._loaded: OrderedDict[Key, Concept] = OrderedDict()
        self._absent: OrderedDict[Key, None] = OrderedDict()
        self._generation = 0  # changes seen; a lookup that spans one caches nothing
        self._damaged: dict[Key, DamagedConcept] = {}
        for row, reason in store.damaged_concepts():
            self._mark_damaged(row, reason)
        store.subscribe(self._on_change)

    # --- generation -------------------------------------------------------------------------

    @property
    def is_sdxl(self) -> bool:
        return len(self.widths) == 2

    def concepts_for(self, tenant: str, prompts: Iterable[str]) -> ConceptTable | SdxlConcepts:
        """The tenant's concepts that ``prompts`` may name: ``{token: [K, D]}`` (SDXL: per text
        encoder), found as ``TokenIndex.split`` finds tokens (whole words, in any case or
        Unicode form)."""
        keys: set[str] = set()
        for prompt in prompts:
            keys |= candidate_keys(prompt, MAX_TOKEN_LENGTH, MAX_CANDIDATE_KEYS - len(keys))
        found, missing = self._cached(tenant, keys)
        if missing:
            found += self._look_up(tenant, missing)
        return per_encoder(found, self.is_sdxl)

    def _cached(self, tenant: str, keys: set[str]) -> tuple[list[Concept], list[str]]:
        found: list[Concept] = []
        missing: list[str] = []
        with self._lock:
            for key in keys:
                if (tenant, key) in self._loaded:
                    self._loaded.move_to_end((tenant, key))
                    found.append(self._loaded[(tenant, key)])
                elif (tenant, key) in self._absent:
                    self._absent.move_to_end((tenant, key))
                else:
                    missing.append(key)
        return found, missing

    def _look_up(self, tenant: str, keys: list[str]) -> list[Concept]:
        """One store query for ``keys``; what it finds and misses is cached unless a change
        was announced meanwhile."""
        generation = self._generation
        loaded: dict[str, Concept] = {}
        for row in self.store.find_concepts(tenant, keys):
            concept = self._usable_concept(row)
            if concept is not None:
                loaded.setdefault(fold(row.token), concept)
        misses = [key for key in keys if key not in loaded][:MAX_MISSES_CACHED_PER_REQUEST]
        with self._lock:
            if generation == self._generation:
                for key, value in loaded.items():
                    _remember(self._loaded, (tenant, key), value, self._cached_concepts)
                for key in misses if self._cached_misses else ():
                    _remember(self._absent, (tenant, key), None, self._cached_misses)
        return list(loaded.values())

    def _usable_concept(self, row: ConceptRow) -> Concept | None:
        """The row's concept once its file checks out; ``None`` (and reported) if it does not."""
        if (row.tenant, row.token) in self._damaged:
            return None
        try:
            data = self.store.concept_data(row)
            name = f"{row.sha256}.safetensors"  # messages name the file, never the folder
            if hashlib.sha256(data).hexdigest() != row.sha256:
                raise ConceptFileError(f"{name}: its content does not match its sha256")
            return parse_for_model(data, name, self.widths, token=row.token)
        except ConceptFileError as error:
            if self.store.get_concept(row.tenant, row.token) == row:  # not replaced meanwhile
                self._mark_damaged(row, str(error))
            return None

    # --- concepts ---------------------------------------------------------------------------

    @property
    def damaged(self) -> list[DamagedConcept]:
        """Stored concepts found unusable, by tenant and token (until replaced or deleted)."""
        return sorted(self._damaged.values(), key=lambda d: (d.tenant, d.token))

    def register(
        self,
        data: bytes,
        filename: str,
        *,
        tenant: str = DEFAULT_TENANT,
        token: str | None = None,
        replace: bool = False,
        job_id: str = "",
    ) -> ConceptRow:
        """Validate ``data`` (a concept file in any supported format) and register it."""
        if len(data) > self.max_file_bytes:
            raise InvalidInputError(
                f"concept file {filename!r} is {len(data)} bytes; the limit is "
                f"{self.max_file_bytes} bytes"
            )
        name = _display_name(filename)
        concept = parse_for_model(data, name, self.widths, vocabulary=self.vocabulary, token=token)
        stored = concept_to_bytes(concept)  # diffusers' format; SDXL's (clip_l, clip_g)
        row = ConceptRow(
            token=concept.token,
            sha256=hashlib.sha256(stored).hexdigest(),
            num_vectors=concept.num_vectors,
            width=concept.width,
            source_format=concept.source_format.value,
            size_bytes=len(stored),
            created_at=time.time(),
            job_id=job_id,
            tenant=tenant,
        )
        self.store.put_concept(row, stored, replace=replace, max_concepts=self.max_concepts)
        self._forget(tenant, fold(row.token))  # this replica reads its own write at once
        self._damaged.pop((tenant, row.token), None)
        log.info("registered concept %s (%d×%d)", row.token, row.num_vectors, row.width)
        return row

    def register_concept(
        self,
        concept: Concept,
        *,
        tenant: str = DEFAULT_TENANT,
        job_id: str = "",
        replace: bool = True,
    ) -> ConceptRow:
        """Register a concept learned by a job (already validated by the trainer)."""
        return self.register(
            concept_to_bytes(concept),
            f"{job_id or 'job'}.safetensors",
            tenant=tenant,
            token=concept.token,
            replace=replace,
            job_id=job_id,
        )

    def get(self, tenant: str, token: str) -> ConceptRow:
        row = self.store.get_concept(tenant, token)
        if row is None:
            raise NotFoundError(f"concept {token!r} is not registered")
        if (tenant, token) in self._damaged:
            raise NotFoundError(
                f"concept {token!r} is damaged on the server; register it again with replace, "
                "or delete it"
            )
        return row

    def find(self, tenant: str, token: str) -> str | None:
        """The tenant's registered token that ``token`` spells in another case or form, if any."""
        rows = self.store.find_concepts(tenant, [fold(token)])
        return rows[0].token if rows else None

    def file_bytes(self, tenant: str, token: str) -> bytes:
        """The concept as a safetensors file: diffusers' format, or SDXL's (clip_l, clip_g)."""
        return self.store.concept_data(self.get(tenant, token))

    def list(self, tenant: str, after: str = "", limit: int = -1) -> list[ConceptRow]:
        """The tenant's usable concepts by token, after ``after``: damaged ones are left out."""
        damaged = {token for owner, token in self._damaged if owner == tenant}
        # Fetching ``len(damaged)`` more rows than asked still fills the page.
        rows = self.store.list_concepts(tenant, after, limit + len(damaged) if limit >= 0 else -1)
        usable = [row for row in rows if row.token not in damaged]
        return usable if limit < 0 else usable[:limit]

    def delete(self, tenant: str, token: str) -> ConceptRow:
        row = self.store.delete_concept(tenant, token)
        if row is None:
            raise NotFoundError(f"concept {token!r} is not registered")
        self._forget(tenant, fold(token))
        self._damaged.pop((tenant, token), None)
        log.info("deleted concept %s", token)
        return row

    # --- cache upkeep -----------------------------------------------------------------------

    def _on_change(self, event: StoreEvent) -> None:
        """A store event, from this replica or another (on the store's thread). A concept that
        changed is no longer the one found damaged (its new row is checked when it is used)."""
        if event.kind == "concept":
            self._forget(event.tenant, event.key)
            for tenant, token in list(self._damaged):
                if tenant == event.tenant and fold(token) == event.key:
                    self._damaged.pop((tenant, token), None)
        elif event.kind == "reset":
            with self._lock:
                self._generation += 1
                self._loaded.clear()
                self._absent.clear()

    def _forget(self, tenant: str, key: str) -> None:
        with self._lock:
            self._generation += 1
            self._loaded.pop((tenant, key), None)
            self._absent.pop((tenant, key), None)

    def _mark_damaged(self, row: ConceptRow, reason: str) -> None:
        log.error("stored concept %s is unusable and was left out: %s", row.token, reason)
        self._damaged[(row.tenant, row.token)] = DamagedConcept(
            row.token, row.sha256, reason, row.tenant
        )


def _remember(cache: OrderedDict[Key, V], key: Key, value: V, limit: int) -> None:
    """Put ``key`` last in ``cache``; drop the least recently used past ``limit``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


def _display_name(filename: str) -> str:
    """The upload's name for messages: its last path part, so no path is ever implied."""
    name = Path(filename.replace("\\", "/")).name if filename else ""
    return name or "uploaded file"
