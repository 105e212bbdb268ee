"""The concept registry and its SQLite store: validation, durability, and no path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textinv.concepts import Concept, concept_to_bytes
from textinv.errors import AlreadyExistsError, ConceptFileError, InvalidInputError, NotFoundError
from textinv_server.registry import ConceptRegistry
from textinv_server.store import Store

WIDTH = 32


def concept_bytes(token: str = "<cat-toy>", k: int = 2, seed: int = 0) -> bytes:
    vectors = torch.randn(k, WIDTH, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))


def open_registry(folder: Path) -> ConceptRegistry:
    store = Store(folder / "textinv.db")
    return ConceptRegistry(
        store, folder / "concepts", width=WIDTH, vocabulary={"cat</w>"}, max_file_bytes=1 << 20
    )


def test_register_get_list_delete(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    row = registry.register(concept_bytes(), "learned_embeds.safetensors")
    assert (row.token, row.num_vectors, row.width) == ("<cat-toy>", 2, WIDTH)
    assert set(registry.snapshot()) == {"<cat-toy>"}
    assert [r.token for r in registry.list()] == ["<cat-toy>"]
    assert registry.file_bytes("<cat-toy>")[:8]  # a safetensors file
    registry.delete("<cat-toy>")
    assert registry.snapshot() == {}
    assert list((tmp_path / "concepts").iterdir()) == []
    with pytest.raises(NotFoundError, match="<cat-toy>"):
        registry.get("<cat-toy>")


def test_concepts_survive_a_restart(tmp_path: Path) -> None:
    first = open_registry(tmp_path)
    first.register(concept_bytes("<a>", seed=1), "a.safetensors")
    first.register(concept_bytes("<b>", k=3, seed=2), "b.safetensors")
    first.store.close()
    second = open_registry(tmp_path)
    snapshot = second.snapshot()
    assert set(snapshot) == {"<a>", "<b>"} and snapshot["<b>"].shape == (3, WIDTH)


def test_duplicate_needs_replace(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes(seed=1), "x.safetensors")
    with pytest.raises(AlreadyExistsError, match="<cat-toy>"):
        registry.register(concept_bytes(seed=2), "x.safetensors")
    registry.register(concept_bytes(seed=2), "x.safetensors", replace=True)
    assert len(list((tmp_path / "concepts").iterdir())) == 1  # the replaced file is gone


def test_bad_upload_keeps_what_was_stored(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes(), "good.safetensors")
    bad = concept_to_bytes(Concept("<wide>", torch.randn(1, 64)))
    with pytest.raises(ConceptFileError, match="width 64"):
        registry.register(bad, "wide.safetensors")
    with pytest.raises(ConceptFileError, match="evil"):
        registry.register(b"\x80\x04junk", "../../etc/evil.pt")
    with pytest.raises(InvalidInputError, match="limit"):
        registry.register(b"x" * (2 << 20), "huge.safetensors")
    assert set(registry.snapshot()) == {"<cat-toy>"}


def test_file_names_never_come_from_tokens_or_uploads(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("../../escape"), "../../../x.safetensors")
    files = list((tmp_path / "concepts").iterdir())
    assert len(files) == 1 and files[0].parent == tmp_path / "concepts"
    assert files[0].stem == registry.get("../../escape").sha256


def test_rename_on_register(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes(), "x.safetensors", token="<renamed>")
    assert set(registry.snapshot()) == {"<renamed>"}
    with pytest.raises(InvalidInputError, match="collides"):
        registry.register(concept_bytes(), "x.safetensors", token="cat")
