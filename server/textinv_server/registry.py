"""The concept registry: validated concepts, durable on disk, live in memory for generation.

Registering a concept validates the upload (``textinv.concepts.parse_concept``: format, shape,
dtype, finite values, width, token), writes its diffusers-format file atomically under a
content-addressed name, commits its row, then publishes its vectors. The very next generation
sees it; nothing is re-exported or reloaded.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import torch

from textinv.concepts import Concept, ConceptFormat, concept_to_bytes, load_concept, parse_concept
from textinv.errors import AlreadyExistsError, ConceptFileError, InvalidInputError, NotFoundError
from textinv.fileio import atomic_write_bytes
from textinv_server.store import ConceptRow, Store

log = logging.getLogger(__name__)


class ConceptRegistry:
    def __init__(
        self,
        store: Store,
        folder: Path,
        *,
        width: int,
        vocabulary: Collection[str],
        max_file_bytes: int,
    ) -> None:
        self.store = store
        self.folder = folder
        self.width = width
        self.vocabulary = vocabulary
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._vectors: dict[str, torch.Tensor] = {}
        folder.mkdir(parents=True, exist_ok=True)
        self._load_stored()

    def snapshot(self) -> Mapping[str, torch.Tensor]:
        """The registered concepts' vectors now: ``{token: [K, D]}``; later changes don't show."""
        with self._lock:
            return dict(self._vectors)

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
            previous = self.store.get_concept(concept.token)
            if previous is not None and not replace:
                raise AlreadyExistsError(
                    f"concept {concept.token!r} is already registered; delete it or set replace"
                )
            row = self._write(concept, job_id, previous)
            self._vectors[concept.token] = concept.vectors
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
        row = self.store.get_concept(token)
        if row is None:
            raise NotFoundError(f"concept {token!r} is not registered")
        return row

    def file_bytes(self, token: str) -> bytes:
        """The concept as a diffusers-format safetensors file."""
        return self._path(self.get(token).sha256).read_bytes()

    def list(self, after: str = "", limit: int = -1) -> list[ConceptRow]:
        return self.store.list_concepts(after, limit)

    def delete(self, token: str) -> ConceptRow:
        with self._lock:
            row = self.get(token)
            self.store.delete_concept(token)
            self._vectors.pop(token, None)
            if not self.store.sha256_in_use(row.sha256):
                self._path(row.sha256).unlink(missing_ok=True)
        log.info("deleted concept %s", token)
        return row

    def _write(self, concept: Concept, job_id: str, previous: ConceptRow | None) -> ConceptRow:
        """File first (atomic), then the row: a crash between leaves an unused file, no lost row."""
        data = concept_to_bytes(concept, ConceptFormat.DIFFUSERS)
        sha256 = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self._path(sha256), data)
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
        """Publish every stored concept; a damaged file is logged and skipped, never fatal."""
        for row in self.store.list_concepts():
            try:
                concept = load_concept(self._path(row.sha256), expected_width=self.width)
            except ConceptFileError as error:
                log.error("stored concept %s is unusable and was skipped: %s", row.token, error)
                continue
            self._vectors[row.token] = concept.vectors


def _display_name(filename: str) -> str:
    """The upload's name for messages: its last path part, so no path is ever implied."""
    name = Path(filename.replace("\\", "/")).name if filename else ""
    return name or "uploaded file"
