"""Tenants on one real server: keys map to tenants and roles, and each tenant sees, uses and
deletes only its own concepts and jobs (issue 14). Every test runs on the SQLite store and on a
PostgreSQL database of its own (skipped without a PostgreSQL server, failed under CI).

The key file holds three keys: acme's and globex's, which may manage, and acme's generate-only key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import ServerThread
from tests.integration.test_server_jobs import params, training_images
from tests.integration.test_server_rpcs import concept_file, small
from textinv.concepts import parse_concept
from textinv_client import (
    JobInfo,
    JobState,
    NotFound,
    PermissionDenied,
    TextInvClient,
    Unauthenticated,
    convert,
)
from textinv_server.keys import GENERATE, MANAGE, KeyEntry, hash_key, key_file_text

ACME_KEY, GLOBEX_KEY, ACME_GENERATE_KEY = "acme-manage-key", "globex-manage-key", "acme-gen-key"
KEYS = (
    KeyEntry(hash_key(ACME_KEY), "acme", MANAGE),
    KeyEntry(hash_key(GLOBEX_KEY), "globex", MANAGE),
    KeyEntry(hash_key(ACME_GENERATE_KEY), "acme", GENERATE, name="acme's app"),
)


@dataclass
class Tenants:
    """Clients of one server, one per key; ``store`` is the kind the server was started on."""

    server: ServerThread
    store: str
    acme: TextInvClient
    globex: TextInvClient
    acme_generate: TextInvClient


@pytest.fixture(params=["sqlite", "postgresql"])
def tenants(
    request: pytest.FixtureRequest, start_textinv: Callable[..., ServerThread], tmp_path: Path
) -> Iterator[Tenants]:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(key_file_text(KEYS))
    store = "sqlite" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    server = start_textinv(keys_file=keys_file, store=store)
    keys = (ACME_KEY, GLOBEX_KEY, ACME_GENERATE_KEY)
    clients = [TextInvClient(server.target, api_key=key) for key in keys]
    yield Tenants(server, request.param, *clients)
    for client in clients:
        client.close()
    # Stopped here, before ``pg_url`` drops its database (its teardown runs before
    # ``start_textinv``'s): the server's store listener would otherwise see it vanish.
    server.stop()


def finished(textinv: TextInvClient, job_id: str) -> JobInfo:
    final = list(textinv.watch_job(job_id))[-1]
    assert isinstance(final, JobInfo) and final.state.is_terminal
    return final


def test_two_tenants_register_one_token_and_each_generates_with_its_own(tenants: Tenants) -> None:
    acme, globex = tenants.acme, tenants.globex
    acme.register_concept(concept_file("<x>", seed=1), filename="x.safetensors")
    globex.register_concept(concept_file("<x>", seed=2), filename="x.safetensors")
    prompt = small("a photo of <x>")
    acme_image, globex_image = acme.generate(prompt).images, globex.generate(prompt).images
    assert acme_image != globex_image
    # Each tenant gets the same image again: the difference is the vectors, not noise.
    assert acme.generate(prompt).images == acme_image
    assert globex.generate(prompt).images == globex_image
    # The generate-only key is acme's: it uses acme's vectors.
    assert tenants.acme_generate.generate(prompt).images == acme_image


def test_a_tenant_can_neither_list_nor_use_nor_delete_anothers_concept(tenants: Tenants) -> None:
    acme, globex = tenants.acme, tenants.globex
    acme.register_concept(concept_file("<only-acme>", seed=3), filename="a.safetensors")
    globex.register_concept(concept_file("<only-globex>", seed=4), filename="g.safetensors")
    assert [c.token for c in acme.list_concepts()] == ["<only-acme>"]
    assert [c.token for c in globex.list_concepts()] == ["<only-globex>"]
    # The same answer as for a token nobody registered: nothing says that another tenant has it.
    with pytest.raises(NotFound, match="^NOT_FOUND: concept '<only-acme>' is not registered$"):
        globex.get_concept("<only-acme>")
    with pytest.raises(NotFound, match="<only-acme>"):
        globex.download_concept("<only-acme>")
    with pytest.raises(NotFound, match="<only-acme>"):
        globex.delete_concept("<only-acme>")
    with pytest.raises(NotFound, match="<only-acme>"):
        globex.generate(small("a photo of <only-acme>"))
    # Acme's concept survived globex's delete, and acme still generates with it.
    assert acme.get_concept("<only-acme>").token == "<only-acme>"
    acme.generate(small("a photo of <only-acme>"))


def test_a_tenants_job_and_the_concept_it_learns_are_its_own(tenants: Tenants) -> None:
    acme, globex = tenants.acme, tenants.globex
    job = acme.create_inversion_job(training_images(), params("<acme-job>", steps=2))
    for call in (globex.get_job, globex.cancel_job, globex.download_job_concept):
        with pytest.raises(NotFound, match=f"job '{job.job_id}' does not exist"):
            call(job.job_id)
    with pytest.raises(NotFound):
        next(globex.watch_job(job.job_id))
    assert globex.list_jobs() == []
    assert [j.job_id for j in acme.list_jobs()] == [job.job_id]
    # Globex may train the same token meanwhile: a queued job's token is its tenant's only. (Its
    # own seed: the same images and params would learn the same vectors.)
    job_params = dataclasses.replace(params("<acme-job>", steps=2), seed=2)
    theirs = globex.create_inversion_job(training_images(), job_params)
    final = finished(acme, job.job_id)
    assert final.state is JobState.SUCCEEDED and final.registered_token == "<acme-job>"
    assert finished(globex, theirs.job_id).state is JobState.SUCCEEDED
    assert [j.job_id for j in globex.list_jobs()] == [theirs.job_id]
    # Each job registered its concept for its own tenant: the same token, different vectors.
    prompt = small("a photo of <acme-job>")
    assert acme.generate(prompt).images != globex.generate(prompt).images
    learned = [parse_concept(c.download_concept("<acme-job>"), "job") for c in (acme, globex)]
    assert not torch.equal(learned[0].vectors, learned[1].vectors)


def test_a_job_registers_for_its_tenant_only(tenants: Tenants) -> None:
    acme, globex = tenants.acme, tenants.globex
    job = acme.create_inversion_job(training_images(), params("<learned>", steps=2))
    assert finished(acme, job.job_id).state is JobState.SUCCEEDED
    assert [c.token for c in acme.list_concepts()] == ["<learned>"]
    assert globex.list_concepts() == []
    with pytest.raises(NotFound, match="<learned>"):
        globex.generate(small("a photo of <learned>"))
    acme.generate(small("a photo of <learned>"))


def test_a_generate_only_key_generates_and_reads_but_changes_nothing(tenants: Tenants) -> None:
    acme, reader = tenants.acme, tenants.acme_generate
    acme.register_concept(concept_file("<kept>", seed=6), filename="k.safetensors")
    job = finished(acme, acme.create_inversion_job(training_images(), params("<j>", 2)).job_id)
    concepts, jobs = acme.list_concepts(), acme.list_jobs()
    # Generate and read work.
    reader.generate(small("a photo of <kept>"))
    assert reader.list_concepts() == concepts
    assert reader.get_concept("<kept>") == acme.get_concept("<kept>")
    assert reader.get_job(job.job_id) == job and reader.list_jobs() == jobs
    assert finished(reader, job.job_id) == job
    # Every change is refused, and says why.
    refused: list[Callable[[], object]] = [
        lambda: reader.register_concept(concept_file("<new>"), filename="n.safetensors"),
        lambda: reader.register_concept(concept_file("<kept>", seed=7), replace=True),
        lambda: reader.delete_concept("<kept>"),
        lambda: reader.create_inversion_job(training_images(), params("<other>", steps=2)),
        lambda: reader.cancel_job(job.job_id),
    ]
    for call in refused:
        with pytest.raises(PermissionDenied, match="this API key may only generate"):
            call()
    assert acme.list_concepts() == concepts and acme.list_jobs() == jobs
    kept = parse_concept(acme.download_concept("<kept>"), "download")
    assert torch.equal(kept.vectors, parse_concept(concept_file("<kept>", seed=6), "x").vectors)


def test_a_request_id_is_idempotent_per_tenant(tenants: Tenants) -> None:
    acme, globex = tenants.acme, tenants.globex
    images, job = training_images(), params("<again>", steps=2)
    first = acme.create_inversion_job(images, job, request_id="create-1")
    again = acme.create_inversion_job(images, job, request_id="create-1")
    assert again.job_id == first.job_id
    other = globex.create_inversion_job(images, job, request_id="create-1")
    assert other.job_id != first.job_id
    assert [j.job_id for j in acme.list_jobs()] == [first.job_id]
    assert [j.job_id for j in globex.list_jobs()] == [other.job_id]
    # Let both finish before the server stops (a 2-step job takes well under a second here).
    assert finished(acme, first.job_id).state is JobState.SUCCEEDED
    assert finished(globex, other.job_id).state is JobState.SUCCEEDED


def test_server_info_reports_the_callers_tenant_and_the_store(tenants: Tenants) -> None:
    infos = [c.get_server_info() for c in (tenants.acme, tenants.globex, tenants.acme_generate)]
    assert [info.tenant for info in infos] == ["acme", "globex", "acme"]
    assert {info.store for info in infos} == {tenants.store}
    replica = infos[0].replica_id
    assert replica and all(info.replica_id == replica for info in infos)
    # The three fields survive the client's conversion both ways.
    assert convert.server_info_from_pb(convert.server_info_to_pb(infos[0])) == infos[0]
    stranger = TextInvClient(tenants.server.target, api_key="not-a-key")
    with stranger, pytest.raises(Unauthenticated):
        stranger.get_server_info()
