"""The concept registry and its SQLite store: validation, durability, no path escapes, tenants,
and the bounded cache that stays right while concepts change."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Collection
from pathlib import Path

import pytest
import torch

from textinv.concept_table import ConceptTable
from textinv.concepts import Concept, concept_to_bytes
from textinv.errors import (
    AlreadyExistsError,
    ConceptFileError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
)
from textinv_server.registry import ConceptRegistry
from textinv_server.store import DEFAULT_TENANT, ConceptRow, StoreEvent
from textinv_server.store_sqlite import SqliteStore

WIDTH = 32
T = DEFAULT_TENANT
# Every token these tests register, in one prompt: what a request naming all of them finds.
EVERY_TOKEN = "<cat-toy> <renamed> <a> <b> <c> <d> " + " ".join(f"<t{i}>" for i in range(5))


def visible(registry: ConceptRegistry, prompt: str = EVERY_TOKEN, tenant: str = T) -> set[str]:
    """The tokens a request with ``prompt`` gets from the registry."""
    return set(sd_table(registry, tenant, [prompt]))


def concept_bytes(token: str = "<cat-toy>", k: int = 2, seed: int = 0) -> bytes:
    vectors = torch.randn(k, WIDTH, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))


def open_registry(folder: Path) -> ConceptRegistry:
    store = SqliteStore(folder / "textinv.db")
    return ConceptRegistry(store, widths=(WIDTH,), vocabulary={"cat</w>"}, max_file_bytes=1 << 20)


def sd_table(registry: ConceptRegistry, tenant: str, prompts: list[str]) -> ConceptTable:
    """What an SD 1.x registry finds: one table, ``{token: [K, D]}``."""
    table = registry.concepts_for(tenant, prompts)
    assert isinstance(table, ConceptTable)
    return table


def test_register_get_list_delete(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    row = registry.register(concept_bytes(), "learned_embeds.safetensors")
    assert (row.token, row.num_vectors, row.width) == ("<cat-toy>", 2, WIDTH)
    assert visible(registry) == {"<cat-toy>"}
    assert [r.token for r in registry.list(T)] == ["<cat-toy>"]
    assert registry.file_bytes(T, "<cat-toy>")[:8]  # a safetensors file
    registry.delete(T, "<cat-toy>")
    assert visible(registry) == set()
    assert list((tmp_path / "concepts").iterdir()) == []
    with pytest.raises(NotFoundError, match="<cat-toy>"):
        registry.get(T, "<cat-toy>")


def test_concepts_survive_a_restart(tmp_path: Path) -> None:
    first = open_registry(tmp_path)
    first.register(concept_bytes("<a>", seed=1), "a.safetensors")
    first.register(concept_bytes("<b>", k=3, seed=2), "b.safetensors")
    first.store.close()
    second = open_registry(tmp_path)
    table = sd_table(second, T, [EVERY_TOKEN])
    assert set(table) == {"<a>", "<b>"} and table["<b>"].shape == (3, WIDTH)


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
    assert visible(registry) == {"<cat-toy>"}


def test_file_names_never_come_from_tokens_or_uploads(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("../../escape"), "../../../x.safetensors")
    files = list((tmp_path / "concepts").iterdir())
    assert len(files) == 1 and files[0].parent == tmp_path / "concepts"
    assert files[0].stem == registry.get(T, "../../escape").sha256


def test_rename_on_register(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes(), "x.safetensors", token="<renamed>")
    assert visible(registry) == {"<renamed>"}
    with pytest.raises(InvalidInputError, match="collides"):
        registry.register(concept_bytes(), "x.safetensors", token="cat")


def test_the_number_of_concepts_is_bounded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "textinv.db")
    registry = ConceptRegistry(
        store,
        widths=(WIDTH,),
        vocabulary=(),
        max_file_bytes=1 << 20,
        max_concepts=2,
    )
    registry.register(concept_bytes("<a>"), "a.safetensors")
    registry.register(concept_bytes("<b>"), "b.safetensors")
    with pytest.raises(OverloadedError, match="2 concepts"):
        registry.register(concept_bytes("<c>"), "c.safetensors")
    registry.register(concept_bytes("<b>", seed=3), "b.safetensors", replace=True)  # no new row
    registry.delete(T, "<a>")
    registry.register(concept_bytes("<c>"), "c.safetensors")
    assert visible(registry) == {"<b>", "<c>"}


def test_lookups_are_cached_and_every_change_is_seen(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<a>"), "a.safetensors")
    queries: list[list[str]] = []
    find = registry.store.find_concepts

    def counted(tenant: str, keys: Collection[str]) -> list[ConceptRow]:
        queries.append(sorted(keys))
        return find(tenant, keys)

    registry.store.find_concepts = counted  # type: ignore[method-assign]
    assert visible(registry, "a photo of <a> and <b>") == {"<a>"}
    assert visible(registry, "a photo of <a> and <b>") == {"<a>"}
    assert len(queries) == 1  # the second request: found and missing words both cached
    registry.register(concept_bytes("<b>"), "b.safetensors")  # "<b>" was cached as missing
    registry.delete(T, "<a>")
    assert visible(registry, "a photo of <a> and <b>") == {"<b>"}
    assert sd_table(registry, T, ["<B>"]).index.find("<B>") == "<b>"


def test_a_change_announced_during_a_lookup_is_not_cached_stale(tmp_path: Path) -> None:
    """Another replica registers ``<late>`` between this one's store query and its caching of
    the miss: the announcement must win, or the miss would hide ``<late>`` for ever."""
    registry = open_registry(tmp_path)
    find = registry.store.find_concepts

    def find_then_someone_registers(tenant: str, keys: object) -> object:
        found = find(tenant, keys)  # type: ignore[arg-type]
        registry._on_change(StoreEvent("concept", tenant=T, key="<late>"))
        return found

    registry.store.find_concepts = find_then_someone_registers  # type: ignore[assignment]
    assert visible(registry, "<late>") == set()
    registry.store.find_concepts = find  # type: ignore[method-assign]
    data = concept_bytes("<late>")
    row = ConceptRow(
        "<late>", hashlib.sha256(data).hexdigest(), 2, WIDTH, "diffusers", len(data), 0
    )
    # Written by "another replica": only the store's announcement reaches this registry.
    registry.store.put_concept(row, data, replace=False, max_concepts=10)
    assert visible(registry, "<late>") == {"<late>"}


def test_two_tenants_have_their_own_concepts(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<x>", seed=1), "x.safetensors", tenant="acme")
    registry.register(concept_bytes("<x>", seed=2), "x.safetensors", tenant="globex")
    acme, globex = (sd_table(registry, t, ["<x>"])["<x>"] for t in ("acme", "globex"))
    assert not torch.equal(acme, globex)
    assert visible(registry, "<x>") == set()  # the default tenant has none
    registry.delete("acme", "<x>")
    assert visible(registry, "<x>", "acme") == set() and visible(registry, "<x>", "globex")
    with pytest.raises(NotFoundError):
        registry.get("acme", "<x>")


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "textinv.db")
    registry = ConceptRegistry(
        store, widths=(WIDTH,), vocabulary=(), max_file_bytes=1 << 20, cached_concepts=2
    )
    for i in range(5):
        registry.register(concept_bytes(f"<t{i}>", seed=i), "t.safetensors")
    assert visible(registry) == {f"<t{i}>" for i in range(5)}  # a request gets every one
    assert len(registry._loaded) == 2  # the replica keeps the two used last


def test_tokens_that_differ_only_in_case_cannot_both_be_registered(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<cat-toy>"), "a.safetensors")
    with pytest.raises(AlreadyExistsError, match="case-insensitively"):
        registry.register(concept_bytes("<Cat-Toy>"), "b.safetensors")
    with pytest.raises(AlreadyExistsError, match="case-insensitively"):
        registry.register(concept_bytes("<Cat-Toy>"), "b.safetensors", replace=True)
    assert visible(registry) == {"<cat-toy>"}


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
    assert visible(registry) == {"<b>", "<d>"}
    assert [r.token for r in registry.list(T)] == ["<b>", "<d>"]
    assert [r.token for r in registry.list(T, limit=1)] == ["<b>"]  # a page is still full
    assert [r.token for r in registry.list(T, after="<b>", limit=1)] == ["<d>"]
    with pytest.raises(NotFoundError, match="damaged"):
        registry.get(T, "<a>")
    # Files no row names are gone; a damaged row's file and files not ours are kept.
    assert not paths["orphan"].exists() and not paths["temporary"].exists()
    assert paths["altered"].exists() and paths["stranger"].exists()


def test_a_damaged_concept_can_be_replaced_or_deleted(tmp_path: Path) -> None:
    damage_at_rest(tmp_path)
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<a>", seed=9), "a.safetensors", replace=True)
    registry.delete(T, "<c>")
    assert registry.damaged == []
    assert visible(registry) == {"<a>", "<b>", "<d>"}
    assert [r.token for r in registry.list(T)] == ["<a>", "<b>", "<d>"]
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
        assert registry.damaged == [] and visible(registry) == set(tokens)
        names = {p.name for p in (tmp_path / "concepts").iterdir()}
        assert names == {f"{registry.get(T, t).sha256}.safetensors" for t in tokens}
        registry.store.close()


def test_a_concept_replaced_during_a_lookup_is_not_called_damaged(tmp_path: Path) -> None:
    """The row was found, then replaced (its old file dropped) before its file was read: that is
    a change, not damage, and the next request finds the new concept."""
    registry = open_registry(tmp_path)
    registry.register(concept_bytes("<r>", seed=1), "r.safetensors")
    find = registry.store.find_concepts

    def find_then_replaced(tenant: str, keys: object) -> object:
        found = find(tenant, keys)  # type: ignore[arg-type]
        registry.store.find_concepts = find  # type: ignore[method-assign]
        registry.register(concept_bytes("<r>", seed=2), "r.safetensors", replace=True)
        return found

    registry.store.find_concepts = find_then_replaced  # type: ignore[assignment]
    registry._forget(T, "<r>")  # as if this replica had not loaded it yet
    visible(registry, "<r>")
    assert registry.damaged == []
    assert visible(registry, "<r>") == {"<r>"}


def test_a_prompt_of_punctuation_is_refused_before_it_costs_much(tmp_path: Path) -> None:
    registry = open_registry(tmp_path)
    rng = random.Random(0)
    hostile = "".join(rng.choice("()<>[]{}!?.,;:") for _ in range(2000))  # ~120,000 spans
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match="add spaces"):
        registry.concepts_for(T, [hostile])
    elapsed = time.perf_counter() - started
    print(f"refused in {elapsed * 1000:.0f} ms")  # reported, not asserted: machines differ
    words = " ".join(f"word{i}" for i in range(300))  # a long prompt of words is fine
    assert visible(registry, words) == set()
    assert len(registry._absent) <= 256  # and it cannot flush the misses others cached
