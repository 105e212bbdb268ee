"""The concept registry and its SQLite store: validation, durability, and no path escapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from textinv.concepts import Concept, concept_to_bytes
from textinv.errors import (
    AlreadyExistsError,
    ConceptFileError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
)
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


def test_the_number_of_concepts_is_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "textinv.db")
    registry = ConceptRegistry(
        store,
        tmp_path / "concepts",
        width=WIDTH,
        vocabulary=(),
        max_file_bytes=1 << 20,
        max_concepts=2,
    )
    registry.register(concept_bytes("<a>"), "a.safetensors")
    registry.register(concept_bytes("<b>"), "b.safetensors")
    with pytest.raises(OverloadedError, match="2 concepts"):
        registry.register(concept_bytes("<c>"), "c.safetensors")
    registry.register(concept_bytes("<b>", seed=3), "b.safetensors", replace=True)  # no new row
    registry.delete("<a>")
    registry.register(concept_bytes("<c>"), "c.safetensors")
    assert set(registry.snapshot()) == {"<b>", "<c>"}


def test_snapshot_is_shared_and_never_changes_after_it_is_taken(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<a>"), "a.safetensors")
    before = registry.snapshot()
    assert registry.snapshot() is before  # no copy per request
    registry.register(concept_bytes("<b>"), "b.safetensors")
    registry.delete("<a>")
    assert set(before) == {"<a>"} and set(registry.snapshot()) == {"<b>"}
    assert registry.snapshot().index.find("<B>") == "<b>"


def test_tokens_that_differ_only_in_case_cannot_both_be_registered(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<cat-toy>"), "a.safetensors")
    with pytest.raises(AlreadyExistsError, match="case-insensitively"):
        registry.register(concept_bytes("<Cat-Toy>"), "b.safetensors")
    with pytest.raises(AlreadyExistsError, match="case-insensitively"):
        registry.register(concept_bytes("<Cat-Toy>"), "b.safetensors", replace=True)
    assert set(registry.snapshot()) == {"<cat-toy>"}


def damage_at_rest(tmp_path: Path) -> dict[str, Path]:
    """Four concepts stored, then, with the server stopped: one file altered, one removed, and
    an orphan, a crashed write's temporary file and a stranger's file left in the folder."""
    first = open_registry(tmp_path)
    rows = {
        t: first.register(concept_bytes(t, seed=i), "x.safetensors")
        for i, t in enumerate(["<a>", "<b>", "<c>", "<d>"])
    }
    first.store.close()
    folder = tmp_path / "concepts"
    altered = folder / f"{rows['<a>'].sha256}.safetensors"
    data = bytearray(altered.read_bytes())
    data[-1] ^= 0x01  # one bit of one vector: still a valid file, not the stored one
    altered.write_bytes(bytes(data))
    (folder / f"{rows['<c>'].sha256}.safetensors").unlink()
    orphan = folder / f"{'e' * 64}.safetensors"
    orphan.write_bytes(concept_bytes("<orphan>"))
    temporary = folder / f".{'f' * 64}.safetensors.abc123.tmp"
    temporary.write_bytes(b"half a file")
    stranger = folder / "README.txt"
    stranger.write_text("not ours")
    return {"altered": altered, "orphan": orphan, "temporary": temporary, "stranger": stranger}


def test_damaged_files_are_reported_at_start_and_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = damage_at_rest(tmp_path)
    registry = open_registry(tmp_path)
    assert [(d.token, "sha256" in d.reason) for d in registry.damaged] == [
        ("<a>", True),
        ("<c>", False),
    ]
    assert all(str(tmp_path) not in d.reason for d in registry.damaged)  # no server path
    assert "<a>" in caplog.text and "<c>" in caplog.text
    assert set(registry.snapshot()) == {"<b>", "<d>"}
    assert [r.token for r in registry.list()] == ["<b>", "<d>"]
    assert [r.token for r in registry.list(limit=1)] == ["<b>"]  # a page is still full
    assert [r.token for r in registry.list(after="<b>", limit=1)] == ["<d>"]
    with pytest.raises(NotFoundError, match="damaged"):
        registry.get("<a>")
    # Files no row names are gone; a damaged row's file and files not ours are kept.
    assert not paths["orphan"].exists() and not paths["temporary"].exists()
    assert paths["altered"].exists() and paths["stranger"].exists()


def test_a_damaged_concept_can_be_replaced_or_deleted(tmp_path: Path) -> None:
    damage_at_rest(tmp_path)
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<a>", seed=9), "a.safetensors", replace=True)
    registry.delete("<c>")
    assert registry.damaged == []
    assert set(registry.snapshot()) == {"<a>", "<b>", "<d>"}
    assert [r.token for r in registry.list()] == ["<a>", "<b>", "<d>"]
    registry.store.close()
    assert open_registry(tmp_path).damaged == []  # and it stays repaired after a restart


def test_every_referenced_file_survives_the_start_up_clean_up(tmp_path: Path) -> None:
    first = open_registry(tmp_path)
    tokens = [f"<t{i}>" for i in range(5)]
    for i, token in enumerate(tokens):
        first.register(concept_bytes(token, seed=i), "x.safetensors")
    first.store.close()
    for _ in range(2):  # restarts clean up idempotently
        registry = open_registry(tmp_path)
        assert registry.damaged == [] and set(registry.snapshot()) == set(tokens)
        names = {p.name for p in (tmp_path / "concepts").iterdir()}
        assert names == {f"{registry.get(t).sha256}.safetensors" for t in tokens}
        registry.store.close()
