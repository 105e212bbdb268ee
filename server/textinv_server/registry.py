"""The concept registry: validated concepts, durable on disk, live in memory for generation.

Registering a concept validates the upload (``textinv.concepts.parse_concept``: format, shape,
dtype, finite values, width, token), writes its diffusers-format file atomically under a
content-addressed name, commits its row, then publishes its vectors. The very next generation
sees it; nothing is re-exported or reloaded.

The published vectors are one immutable ``ConceptTable``, replaced on every change
(copy-on-write), so ``snapshot()`` costs nothing however many concepts exist, and the table's
index finds a prompt's tokens without looking at the others. Tokens that differ only in case or
Unicode form cannot both be registered: a prompt could not tell them apart.

At start every stored file is checked against its row's sha256; a missing or damaged one is
logged, listed in ``damaged`` and left out of listings and generation. Concept files that no row
names (a crash between the file and its row) are removed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import torch

from textinv.concept_table import ConceptTable
from textinv.concepts import Concept, ConceptFormat, concept_to_bytes, parse_concept
from textinv.errors import (
    AlreadyExistsError,
    ConceptFileError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
)
from textinv.fileio import atomic_write_bytes
from textinv_server.store import ConceptRow, Store, disk_full_error, is_disk_full

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCEPTS = 10_000
# The names this registry gives its files, and the temporary names of ``atomic_write_bytes``.
_CONCEPT_FILE = re.compile(r"[0-9a-f]{64}\.safetensors")
_TEMPORARY_FILE = re.compile(r"\.[0-9a-f]{64}\.safetensors\..+\.tmp")


@dataclass(frozen=True)
class DamagedConcept:
    """A stored concept whose file is missing or does not match its row; never a server path."""

    token: str
    sha256: str
    reason: str


class ConceptRegistry:
    def __init__(
        self,
        store: Store,
        folder: Path,
        *,
        width: int,
        vocabulary: Collection[str],
        max_file_bytes: int,
        max_concepts: int = DEFAULT_MAX_CONCEPTS,
    ) -> None:
        self.store = store
        self.folder = folder
        self.width = width
        self.vocabulary = vocabulary
        self.max_file_bytes = max_file_bytes
        self.max_concepts = max_concepts
        self._lock = threading.Lock()
        self._table = ConceptTable()
        self._damaged: dict[str, DamagedConcept] = {}
        folder.mkdir(parents=True, exist_ok=True)
        self._load_stored()

    def snapshot(self) -> ConceptTable:
        """The registered concepts' vectors now: ``{token: [K, D]}``; later changes don't show.

        O(1): the table is immutable and replaced on every change, never copied per request.
        """
        return self._table

    @property
    def damaged(self) -> list[DamagedConcept]:
        """Stored concepts found unusable at start, by token (until replaced or deleted)."""
        return sorted(self._damaged.values(), key=lambda d: d.token)

    def register(
        self,
        data: bytes,
        filename: str,
        *,
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
        concept = parse_concept(
            data,
            _display_name(filename),
            expected_width=self.width,
            vocabulary=self.vocabulary,
            token=token,
        )
        with self._lock:
            previous = self._check_can_register(concept.token, replace)
            row = self._write(concept, job_id, previous)
            self._table = self._table.with_concept(concept.token, concept.vectors)
            self._damaged.pop(concept.token, None)
        log.info("registered concept %s (%d×%d)", concept.token, row.num_vectors, row.width)
        return row

    def register_concept(
        self, concept: Concept, *, job_id: str = "", replace: bool = True
    ) -> ConceptRow:
        """Register a concept learned on this server (already validated by the trainer)."""
        return self.register(
            concept_to_bytes(concept),
            f"{job_id or 'job'}.safetensors",
            token=concept.token,
            replace=replace,
            job_id=job_id,
        )

    def get(self, token: str) -> ConceptRow:
        row = self._row(token)
        if token in self._damaged:
            raise NotFoundError(
                f"concept {token!r} is damaged on the server; register it again with replace, "
                "or delete it"
            )
        return row

    def file_bytes(self, token: str) -> bytes:
        """The concept as a diffusers-format safetensors file."""
        return self._path(self.get(token).sha256).read_bytes()

    def list(self, after: str = "", limit: int = -1) -> list[ConceptRow]:
        """Usable concepts by token, after ``after``: damaged ones are left out."""
        damaged = set(self._damaged)
        # Fetching ``len(damaged)`` more rows than asked still fills the page.
        rows = self.store.list_concepts(after, limit + len(damaged) if limit >= 0 else -1)
        usable = [row for row in rows if row.token not in damaged]
        return usable if limit < 0 else usable[:limit]

    def delete(self, token: str) -> ConceptRow:
        with self._lock:
            row = self._row(token)
            self.store.delete_concept(token)
            self._table = self._table.without(token)
            self._damaged.pop(token, None)
            if not self.store.sha256_in_use(row.sha256):
                self._path(row.sha256).unlink(missing_ok=True)
        log.info("deleted concept %s", token)
        return row

    def _row(self, token: str) -> ConceptRow:
        row = self.store.get_concept(token)
        if row is None:
            raise NotFoundError(f"concept {token!r} is not registered")
        return row

    def _check_can_register(self, token: str, replace: bool) -> ConceptRow | None:
        """The row ``token`` replaces, if any; refuses duplicates, look-alikes and overflow."""
        previous = self.store.get_concept(token)
        if previous is not None and not replace:
            raise AlreadyExistsError(
                f"concept {token!r} is already registered; delete it or set replace"
            )
        look_alike = self._table.index.find(token)
        if look_alike is not None and look_alike != token:
            raise AlreadyExistsError(
                f"concept {token!r} would match the same prompt words as the registered "
                f"{look_alike!r} (tokens match case-insensitively); delete that one first"
            )
        if previous is None and len(self._table) + len(self._damaged) >= self.max_concepts:
            raise OverloadedError(
                f"the server holds {self.max_concepts} concepts, its limit; delete one first"
            )
        return previous

    def _write(self, concept: Concept, job_id: str, previous: ConceptRow | None) -> ConceptRow:
        """File first (atomic), then the row: a crash between leaves an unused file, no lost row."""
        data = concept_to_bytes(concept, ConceptFormat.DIFFUSERS)
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            atomic_write_bytes(self._path(sha256), data)
        except OSError as error:  # a full disk is RESOURCE_EXHAUSTED, never a path in a reply
            if is_disk_full(error):
                raise disk_full_error() from error
            raise
        row = ConceptRow(
            token=concept.token,
            sha256=sha256,
            num_vectors=concept.num_vectors,
            width=concept.width,
            source_format=concept.source_format.value,
            size_bytes=len(data),
            created_at=time.time(),
            job_id=job_id,
        )
        self.store.put_concept(row)
        replaced = previous is not None and previous.sha256 != sha256
        if replaced and previous and not self.store.sha256_in_use(previous.sha256):
            self._path(previous.sha256).unlink(missing_ok=True)
        return row

    def _path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.safetensors"

    def _load_stored(self) -> None:
        """Publish every stored concept that checks out; report the rest; drop orphan files."""
        # 1. Verify each row's file against its sha256, then parse it as any upload is parsed.
        rows = self.store.list_concepts()
        vectors: dict[str, torch.Tensor] = {}
        for row in rows:
            try:
                vectors[row.token] = self._verified_vectors(row)
            except ConceptFileError as error:
                log.error("stored concept %s is unusable and was left out: %s", row.token, error)
                self._damaged[row.token] = DamagedConcept(row.token, row.sha256, str(error))
        # 2. Publish them in one table (built once, not once per concept).
        self._table = ConceptTable(vectors)
        if len(self._table.index) < len(vectors):
            log.warning(
                "stored concepts differ only in case; a prompt reaches one of each such set"
            )
        # 3. Remove concept files no row names (any row, damaged or not, keeps its file).
        self._remove_orphans({row.sha256 for row in rows})

    def _verified_vectors(self, row: ConceptRow) -> torch.Tensor:
        name = f"{row.sha256}.safetensors"  # messages name the file, never the folder
        try:
            data = self._path(row.sha256).read_bytes()
        except OSError as error:
            raise ConceptFileError(f"{name}: cannot be read ({error.strerror})") from None
        if hashlib.sha256(data).hexdigest() != row.sha256:
            raise ConceptFileError(f"{name}: its content does not match its sha256")
        concept = parse_concept(data, name, expected_width=self.width, token=row.token)
        return concept.vectors

    def _remove_orphans(self, referenced: set[str]) -> None:
        for path in self.folder.iterdir():
            orphan = _CONCEPT_FILE.fullmatch(path.name) and path.stem not in referenced
            if (orphan or _TEMPORARY_FILE.fullmatch(path.name)) and path.is_file():
                log.warning("removing %s: no stored concept uses it", path.name)
                path.unlink(missing_ok=True)


def _display_name(filename: str) -> str:
    """The upload's name for messages: its last path part, so no path is ever implied."""
    name = Path(filename.replace("\\", "/")).name if filename else ""
    return name or "uploaded file"
