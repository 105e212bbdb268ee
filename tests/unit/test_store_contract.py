"""One contract, two stores: the same behaviour from SQLite (the data folder) and PostgreSQL.

Every test runs on both, opened as the server opens them (``open_store``); the PostgreSQL half
gets a fresh database per test (``tests.pg``) and skips where no server runs (fails under CI).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import Image

from textinv.errors import AlreadyExistsError, ConceptFileError, OverloadedError
from textinv.trainer import CONCEPT_FILE
from textinv_client.choices import JobState
from textinv_server.job_uploads import UploadedImage
from textinv_server.store import (
    CANCEL_HINT,
    QUEUED_HINT,
    ConceptRow,
    JobRow,
    Store,
    StoreEvent,
    open_store,
)

UNLIMITED = {"max_queued": 100, "max_stored": 100}


@dataclass
class Opened:
    store: Store
    peer: Callable[[], Store]  # the same state as another process sees it (or this store)


@pytest.fixture(params=["sqlite", "postgresql"])
def opened(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opened]:
    stores: list[Store] = []

    def open_(url: str, folder: str) -> Store:
        stores.append(open_store(url, tmp_path / folder))
        return stores[-1]

    if request.param == "sqlite":
        store = open_("sqlite", "data")
        result = Opened(store, lambda: store)  # one process per data folder
    else:
        url = request.getfixturevalue("pg_url")
        result = Opened(open_(url, "data"), lambda: open_(url, "elsewhere"))
    yield result
    for store in reversed(stores):
        store.close()


@pytest.fixture
def store(opened: Opened) -> Store:
    return opened.store


def concept(
    token: str, tenant: str = "default", data: bytes | None = None
) -> tuple[ConceptRow, bytes]:
    data = data if data is not None else f"vectors of {token} for {tenant}".encode()
    row = ConceptRow(
        token=token,
        sha256=hashlib.sha256(data).hexdigest(),
        num_vectors=1,
        width=32,
        source_format="diffusers",
        size_bytes=len(data),
        created_at=1000.0,
        tenant=tenant,
    )
    return row, data


def put(store: Store, token: str, tenant: str = "default", **kwargs: object) -> ConceptRow:
    row, data = concept(token, tenant)
    store.put_concept(row, data, replace=bool(kwargs.get("replace")), max_concepts=10)
    return row


def job(job_id: str, created_at: float = 1.0, **fields: object) -> JobRow:
    row = JobRow(
        job_id=job_id,
        state=JobState.QUEUED,
        params={"token": f"<{job_id}>", "steps": 4, "nested": {"lr": 0.005}},
        num_images=1,
        skip_register=False,
        total_steps=4,
        created_at=created_at,
    )
    return replace(row, **fields)  # type: ignore[arg-type]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until true or ``timeout_s`` passed (no assertion on how long)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- concepts -------------------------------------------------------------------------------


def test_concepts_are_put_found_listed_and_deleted_per_tenant(store: Store) -> None:
    cat, dog = put(store, "<cat>"), put(store, "<Dog>")
    put(store, "<owl>", tenant="other")
    assert store.get_concept("default", "<cat>") == cat
    assert store.get_concept("other", "<cat>") is None
    assert store.find_concepts("default", ["<dog>", "<owl>", "<none>"]) == [dog]
    assert store.find_concepts("default", []) == []
    assert [r.token for r in store.list_concepts("default")] == ["<Dog>", "<cat>"]
    assert [r.token for r in store.list_concepts("default", after="<Dog>")] == ["<cat>"]
    assert [r.token for r in store.list_concepts("default", limit=1)] == ["<Dog>"]
    assert store.count_concepts("default") == 2 and store.count_concepts("nobody") == 0
    assert store.concept_data(cat) == concept("<cat>")[1]
    assert store.delete_concept("other", "<cat>") is None
    assert store.delete_concept("default", "<cat>") == cat
    assert store.get_concept("default", "<cat>") is None
    assert store.count_concepts("default") == 1
    with pytest.raises(ConceptFileError):
        store.concept_data(cat)  # its file went with its last row
    assert store.damaged_concepts() == []


def test_two_tenants_hold_the_same_token_with_their_own_vectors(store: Store) -> None:
    mine, theirs = put(store, "<cat>", "a"), put(store, "<cat>", "b")
    assert store.concept_data(mine) != store.concept_data(theirs)
    shared, data = concept("<cat>", "c", data=concept("<cat>", "a")[1])
    store.put_concept(shared, data, replace=False, max_concepts=10)  # the same file as a's
    assert store.delete_concept("a", "<cat>") == mine
    assert store.concept_data(shared) == data  # still used by c
    assert store.get_concept("b", "<cat>") == theirs


def test_duplicates_and_look_alikes_are_refused_and_replace_replaces(store: Store) -> None:
    first = put(store, "<cat>")
    with pytest.raises(AlreadyExistsError, match="already registered"):
        put(store, "<cat>")
    with pytest.raises(AlreadyExistsError, match="same prompt words"):
        put(store, "<CAT>", replace=True)
    put(store, "<CAT>", tenant="other")  # a look-alike of another tenant's is no conflict
    newer, data = concept("<cat>", data=b"new vectors")
    assert store.put_concept(newer, data, replace=True, max_concepts=10) == first
    assert store.get_concept("default", "<cat>") == newer
    assert store.concept_data(newer) == b"new vectors"
    with pytest.raises(ConceptFileError):
        store.concept_data(first)
    assert store.count_concepts("default") == 1


def test_a_tenant_holds_at_most_max_concepts(store: Store) -> None:
    for token in ("<a>", "<b>"):
        row, data = concept(token)
        store.put_concept(row, data, replace=False, max_concepts=2)
    row, data = concept("<c>")
    with pytest.raises(OverloadedError, match="limit"):
        store.put_concept(row, data, replace=False, max_concepts=2)
    again, data = concept("<a>", data=b"other")
    store.put_concept(again, data, replace=True, max_concepts=2)  # a replacement adds none
    other, data = concept("<c>", "other")
    store.put_concept(other, data, replace=False, max_concepts=2)
    store.delete_concept("default", "<b>")
    store.put_concept(row, concept("<c>")[1], replace=False, max_concepts=2)
    assert store.count_concepts("default") == 2


# --- jobs -----------------------------------------------------------------------------------


def test_jobs_are_added_updated_and_listed_by_tenant(store: Store) -> None:
    first = store.add_job(job("j1", 1.0), **UNLIMITED)
    assert first == job("j1", 1.0) and store.get_job("j1") == first
    store.add_job(job("j2", 2.0, tenant="b"), **UNLIMITED)
    store.put_job(job("j3", 3.0, state=JobState.RUNNING))
    store.put_job(job("j3", 3.0, state=JobState.SUCCEEDED, finished_at=5.0))  # overwrites
    assert store.get_job("j3") == job("j3", 3.0, state=JobState.SUCCEEDED, finished_at=5.0)
    assert [r.job_id for r in store.list_jobs()] == ["j3", "j2", "j1"]
    assert [r.job_id for r in store.list_jobs(tenant="b")] == ["j2"]
    assert [r.job_id for r in store.list_jobs((JobState.QUEUED,), "default")] == ["j1"]
    progress = {"step": 2, "total_steps": 4, "loss": 0.5}
    updated = store.update_job("j1", step=2, loss=0.5, progress=progress, cancel_requested=True)
    assert updated == replace(first, step=2, loss=0.5, progress=progress, cancel_requested=True)
    assert store.get_job("j1") == updated
    assert store.update_job("nope", step=1) is None
    with pytest.raises(ValueError, match="not updatable"):
        store.update_job("j1", colour="red")
    assert store.job_ids() == {"j1", "j2", "j3"}
    counts = store.count_jobs()
    assert counts[JobState.QUEUED] == 2 and counts[JobState.SUCCEEDED] == 1
    assert [r.job_id for r in store.finished_before(6.0)] == ["j3"]
    assert store.finished_before(5.0) == []


def test_a_request_id_names_one_job_per_tenant_and_capacity_is_checked(store: Store) -> None:
    first = store.add_job(job("j1", request_id="r1"), **UNLIMITED)
    assert store.add_job(job("j2", request_id="r1"), **UNLIMITED) == first
    assert store.get_job("j2") is None
    assert store.find_job_by_request("default", "r1") == first
    assert store.find_job_by_request("b", "r1") is None
    assert store.add_job(job("j3", tenant="b", request_id="r1"), **UNLIMITED).job_id == "j3"
    store.add_job(job("j4"), **UNLIMITED)  # no request id: no idempotency, no conflict
    with pytest.raises(OverloadedError, match="waiting"):
        store.add_job(job("j5"), max_queued=3, max_stored=100)
    with pytest.raises(OverloadedError, match="stores"):
        store.add_job_allowed(max_queued=100, max_stored=3)
    store.add_job_allowed(**UNLIMITED)


def test_workers_claim_renew_and_release_jobs(store: Store) -> None:
    store.add_job(job("late", 2.0), **UNLIMITED)
    store.add_job(job("early", 1.0), **UNLIMITED)
    claimed = store.claim_job("w1", lease_s=60)
    assert claimed is not None and claimed.job_id == "early"
    assert claimed.state is JobState.RUNNING and claimed.worker == "w1"
    assert claimed.attempts == 1 and claimed.started_at is not None
    assert claimed.lease_expires_at is not None and claimed.lease_expires_at > time.time()
    second = store.claim_job("w2", lease_s=60)
    assert second is not None and second.job_id == "late"
    assert store.claim_job("w3", lease_s=60) is None  # both held under live leases
    assert store.renew_lease("early", "w2", 60) is None  # not w2's
    renewed = store.renew_lease("early", "w1", 120)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > claimed.lease_expires_at
    assert store.release_job("early", "w2") is None
    released = store.release_job("early", "w1")
    assert released is not None and released.state is JobState.QUEUED
    assert released.worker == "" and released.attempts == 0
    assert store.renew_lease("early", "w1", 60) is None  # released: no longer w1's


def test_an_expired_lease_is_taken_over_with_its_attempt_counted(store: Store) -> None:
    store.add_job(job("j1"), **UNLIMITED)
    first = store.claim_job("dead", lease_s=-1)  # a lease that ran out: its worker died
    assert first is not None and first.attempts == 1
    taken = store.claim_job("alive", lease_s=60)
    assert taken is not None and taken.job_id == "j1"
    assert taken.worker == "alive" and taken.attempts == 2
    assert taken.started_at == first.started_at
    assert store.renew_lease("j1", "dead", 60) is None
    assert store.claim_job("other", lease_s=60) is None


def test_changes_are_announced_to_subscribers(store: Store) -> None:
    events: list[StoreEvent] = []
    store.subscribe(events.append)
    put(store, "<Cat>", tenant="a")
    store.add_job(job("j1"), **UNLIMITED)
    store.update_job("j1", cancel_requested=True)
    store.delete_concept("a", "<Cat>")
    concept_event = StoreEvent("concept", tenant="a", key="<cat>")
    assert wait_for(lambda: events.count(concept_event) == 2), events
    created = StoreEvent("job", key=QUEUED_HINT, job_id="j1")  # claimable: workers wake
    cancelled = StoreEvent("job", key=CANCEL_HINT, job_id="j1")  # its worker stops
    assert wait_for(lambda: created in events and cancelled in events), events


# --- job files ------------------------------------------------------------------------------


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (seed * 40 % 256, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_run(folder: Path, steps: tuple[int, ...]) -> None:
    """A run folder as the trainer leaves it: checkpoints, a log and the concept."""
    out = folder / "out"
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for step in steps:
        (out / "checkpoints" / f"step-{step:06d}.safetensors").write_bytes(b"state %d" % step)
    (out / "log.jsonl").write_text(f'{{"steps": {list(steps)}}}\n')
    (out / CONCEPT_FILE).write_bytes(b"learned")


def names(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_job_files_travel_from_worker_to_worker(opened: Opened) -> None:
    files = opened.store.files
    images = [UploadedImage(png(0), "a.png", caption="a {}"), UploadedImage(png(1), "b.png")]
    files.save_uploads("j1", images)
    folder = files.checkout("j1")
    assert names(folder) == {"images/000.img", "images/000.txt", "images/001.img"}
    assert (folder / "images" / "001.img").read_bytes() == png(1)
    write_run(folder, (2, 4))
    files.sync("j1")
    (folder / "out" / "checkpoints" / "step-000002.safetensors").unlink()  # pruned
    write_run(folder, (6,))
    files.sync("j1")
    files.release("j1")
    elsewhere = opened.peer().files.checkout("j1")
    assert names(elsewhere / "out") == {
        "checkpoints/step-000004.safetensors",
        "checkpoints/step-000006.safetensors",
        "log.jsonl",
        CONCEPT_FILE,
    }
    assert (elsewhere / "out" / "log.jsonl").read_text() == '{"steps": [6]}\n'
    assert files.concept_file("j1") == b"learned" and files.concept_file("j2") is None


def test_job_files_are_discarded_and_purged_down_to_the_concept(opened: Opened) -> None:
    files = opened.store.files
    files.save_uploads("j1", [UploadedImage(png(0), "a.png")])
    write_run(files.checkout("j1"), (2,))
    files.sync("j1")
    files.discard_checkpoints("j1")
    files.release("j1")
    assert names(files.checkout("j1")) == {"images/000.img", "out/log.jsonl", f"out/{CONCEPT_FILE}"}
    files.purge("j1")
    files.release("j1")
    assert names(files.checkout("j1")) == {f"out/{CONCEPT_FILE}"}
    files.release("j1")
    files.delete("j1")
    assert files.concept_file("j1") is None
    opened.store.add_job(job("j2"), **UNLIMITED)
    files.save_uploads("j2", [UploadedImage(png(2), "c.png")])
    assert files.remove_orphans(opened.store.job_ids()) == []  # j2 has its row
    assert files.concept_file("j2") is None and "images/000.img" in names(files.checkout("j2"))
