"""Stateless replicas on one PostgreSQL store, as real processes: concepts live on every replica
at once, a job whose worker is killed is resumed by another, and a client given three replicas
keeps working while one is killed and restarted."""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
import torch

from tests.integration.replicas import Replica, Worker, eventually
from tests.integration.test_server_process import training_images, wait_for
from tests.integration.test_server_rpcs import concept_file, small
from textinv.concepts import parse_concept
from textinv.trainer import InvertConfig, invert
from textinv_client import InversionParams, JobProgress, JobState, NotFound, TextInvClient

Spawn = Any


def start_replicas(spawn: Spawn, model: Path, data: Path, store: str, count: int) -> list[Replica]:
    """``count`` serving replicas (no workers), started together."""
    replicas = [
        spawn(Replica(model, data / f"replica-{i}", store, "--no-workers")) for i in range(count)
    ]
    return [replica.wait_serving() for replica in replicas]


def test_a_concept_is_live_on_every_replica_and_gone_from_every_one(
    spawn: Spawn, tiny_model_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    first, second, third = start_replicas(spawn, tiny_model_dir, tmp_path, pg_url, 3)
    clients = [TextInvClient(replica.target) for replica in (first, second, third)]
    try:
        # 1. Registered on the first; the others generate with it at once (looked up on a miss).
        clients[0].register_concept(concept_file("<shared>", seed=1), filename="s.safetensors")
        images = [client.generate(small("a photo of <shared>")).images[0] for client in clients]
        assert images[1] == images[0] == images[2]  # the same vectors everywhere
        assert [c.token for c in clients[2].list_concepts()] == ["<shared>"]
        # 2. Replaced on the second: the first, which cached it, sees the new vectors.
        clients[1].register_concept(
            concept_file("<shared>", seed=2), filename="s.safetensors", replace=True
        )

        def first_sees_the_new_vectors() -> bool:
            return clients[0].generate(small("a photo of <shared>")).images[0] != images[0]

        assert eventually(first_sees_the_new_vectors)
        # 3. Deleted on the third: gone from the first two (announced, no restart).
        clients[2].delete_concept("<shared>")
        for client in clients[:2]:
            eventually(partial(_is_not_found, client, "a photo of <shared>"))
    finally:
        for client in clients:
            client.close()


def _is_not_found(client: TextInvClient, prompt: str) -> bool:
    try:
        client.generate(small(prompt))
    except NotFound:
        return True
    return False


def test_a_job_whose_worker_is_killed_is_resumed_by_another_worker(
    spawn: Spawn, tiny_model: Any, tiny_model_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    (replica,) = start_replicas(spawn, tiny_model_dir, tmp_path, pg_url, 1)
    workers = [
        spawn(Worker(tiny_model_dir, tmp_path / f"worker-{i}", pg_url, "--lease-seconds", "2"))
        for i in range(2)
    ]
    for worker in workers:
        worker.wait_ready()
    params = InversionParams(
        token="<resumed>", init_text="toy", steps=40, checkpoint_every=8, seed=3
    )
    with TextInvClient(replica.target) as textinv:
        job = textinv.create_inversion_job(training_images(3), params)
        running = wait_for(textinv, job.job_id, lambda j: j.step >= 18 or j.state.is_terminal)
        assert running.state is JobState.RUNNING, running  # type: ignore[attr-defined]
        holder = _job_column(pg_url, job.job_id, "worker")
        (victim,) = [w for w in workers if f":{w.pid}/" in holder]  # host:pid/claim
        victim.kill()  # its lease runs out; the other worker takes the job over
        finished = wait_for(textinv, job.job_id, lambda j: j.state.is_terminal)
        assert finished.state is JobState.SUCCEEDED, finished  # type: ignore[attr-defined]
        assert [c.token for c in textinv.list_concepts()] == ["<resumed>"]
        learned = parse_concept(textinv.download_job_concept(job.job_id), "job file")
    assert _job_column(pg_url, job.job_id, "attempts") == 2  # the killed run counted
    config = _job_file(pg_url, job.job_id, "out/config.json")
    assert b'"resumed_from_step": 16' in config or b'"resumed_from_step": 8' in config
    reference = _uninterrupted(pg_url, job.job_id, tiny_model, tmp_path / "reference")
    assert torch.equal(learned.vectors, reference)


def _job_column(url: str, job_id: str, column: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {column} FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
    assert row is not None
    return row[0]


def _job_file(url: str, job_id: str, path: str) -> bytes:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT data FROM job_files WHERE job_id = %s AND path = %s", (job_id, path)
        ).fetchone()
    assert row is not None, path
    return bytes(row[0])


def _uninterrupted(url: str, job_id: str, model: Any, out: Path) -> torch.Tensor:
    """The same job's parameters and images from the store, trained in one go here."""
    images = out / "images"
    images.mkdir(parents=True)
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT params FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        assert found is not None
        (params,) = found
        for path, data in conn.execute(
            "SELECT path, data FROM job_files WHERE job_id = %s AND path LIKE 'images/%%'",
            (job_id,),
        ):
            (out / path).write_bytes(bytes(data))
    params = params if isinstance(params, dict) else __import__("json").loads(params)
    config = InvertConfig(**params, images=str(images), out=str(out / "run"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job workers train
    try:
        return invert(config, model=model).vectors
    finally:
        torch.set_num_threads(threads)


def test_a_client_of_three_replicas_keeps_succeeding_while_one_is_killed_and_restarted(
    spawn: Spawn, tiny_model_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    replicas = start_replicas(spawn, tiny_model_dir, tmp_path, pg_url, 3)
    targets = ",".join(replica.target for replica in replicas)
    failures: list[BaseException] = []
    done = threading.Event()
    calls = [0]

    def keep_generating() -> None:
        with TextInvClient(targets, timeout=60) as textinv:
            while not done.is_set():
                try:
                    textinv.generate(small("a photo", steps=1))
                    calls[0] += 1
                except Exception as error:  # every failure counts against the client
                    failures.append(error)

    load = threading.Thread(target=keep_generating)
    load.start()
    try:
        eventually(lambda: calls[0] >= 5, timeout_s=60)
        victim = replicas[1]
        victim.kill()
        before = calls[0]
        eventually(lambda: calls[0] >= before + 10, timeout_s=60)  # two replicas carry it
        restarted = spawn(
            Replica(
                tiny_model_dir, tmp_path / "replica-1b", pg_url, "--no-workers", port=victim.port
            )
        )
        restarted.wait_serving()
        before = calls[0]
        eventually(lambda: calls[0] >= before + 10, timeout_s=60)
    finally:
        done.set()
        load.join(120)
    assert failures == []


def test_two_tenants_with_one_token_across_replicas(
    spawn: Spawn, tiny_model_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    """Each tenant's ``<x>`` is its own on every replica (test_tenants.py has the whole tenant
    contract on one server)."""
    from textinv_server.keys import hash_key

    keys = tmp_path / "keys.json"
    keys.write_text(
        '{"keys": ['
        f'{{"sha256": "{hash_key("acme-key")}", "tenant": "acme", "role": "manage"}},'
        f'{{"sha256": "{hash_key("globex-key")}", "tenant": "globex", "role": "manage"}}'
        "]}"
    )
    first, second = (
        spawn(
            Replica(tiny_model_dir, tmp_path / f"r{i}", pg_url, "--no-workers", "--keys", str(keys))
        )
        for i in range(2)
    )
    first.wait_serving(), second.wait_serving()
    with (
        TextInvClient(first.target, api_key="acme-key") as acme,
        TextInvClient(second.target, api_key="globex-key") as globex,
        TextInvClient(second.target, api_key="acme-key") as acme_elsewhere,
    ):
        acme.register_concept(concept_file("<x>", seed=1), filename="x.safetensors")
        with pytest.raises(NotFound):
            globex.generate(small("a photo of <x>"))
        globex.register_concept(concept_file("<x>", seed=2), filename="x.safetensors")
        mine = acme_elsewhere.generate(small("a photo of <x>")).images[0]
        theirs = globex.generate(small("a photo of <x>")).images[0]
        assert mine != theirs  # same token, each tenant's own vectors


def test_a_job_trained_by_a_worker_is_watched_and_cancelled_through_a_replica(
    spawn: Spawn, tiny_model_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    """Progress and the cancel travel through the store: the replica trains nothing."""
    (replica,) = start_replicas(spawn, tiny_model_dir, tmp_path, pg_url, 1)
    spawn(Worker(tiny_model_dir, tmp_path / "worker", pg_url)).wait_ready()
    params = InversionParams(token="<watched>", init_text="toy", steps=2000, seed=1)
    with TextInvClient(replica.target) as textinv:
        job = textinv.create_inversion_job(training_images(2), params)
        steps: list[int] = []
        last: Any = None
        for event in textinv.watch_job(job.job_id, timeout=240):
            if isinstance(event, JobProgress):
                steps.append(event.step)
                if len(steps) == 3:  # the worker's steps reached this replica: now cancel here
                    textinv.cancel_job(job.job_id)
            else:
                last = event
        assert len(steps) >= 3 and steps == sorted(steps)
        assert last.state is JobState.CANCELLED and last.step < params.steps
        assert textinv.get_job(job.job_id).state is JobState.CANCELLED
