"""``textinv store migrate``: a stopped server's data folder copied into PostgreSQL, whole, and
again without duplicates."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import torch

from tests.integration.test_server_jobs import training_images
from textinv.cli import main
from textinv.concepts import Concept, concept_to_bytes
from textinv_client.choices import JobState
from textinv_server.job_uploads import UploadedImage
from textinv_server.store import ConceptRow, JobRow, open_store
from textinv_server.store_sqlite import SqliteStore


def concept(token: str, seed: int) -> tuple[ConceptRow, bytes]:
    data = concept_to_bytes(
        Concept(token, torch.randn(2, 32, generator=torch.Generator().manual_seed(seed)))
    )
    row = ConceptRow(token, hashlib.sha256(data).hexdigest(), 2, 32, "diffusers", len(data), 1.0)
    return row, data


def fill(data_dir: Path) -> JobRow:
    """Two tenants' concepts, and a job that died mid-run with a checkpoint and a log."""
    store = SqliteStore(data_dir / "textinv.db")
    for tenant, seed in (("acme", 1), ("globex", 2)):
        row, data = concept("<x>", seed)
        store.put_concept(
            ConceptRow(**{**vars(row), "tenant": tenant}), data, replace=False, max_concepts=9
        )
    images = [UploadedImage(i.data, i.filename, "a {} toy") for i in training_images(2)]
    job = JobRow("a" * 32, JobState.RUNNING, {"token": "<j>", "steps": 9}, 2, False, 9, time.time())
    job = JobRow(
        **{
            **vars(job),
            "attempts": 1,
            "worker": "gone:1",
            "lease_expires_at": 0.0,
            "tenant": "acme",
        }
    )
    store.files.save_uploads(job.job_id, images)
    out = store.files.checkout(job.job_id) / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "step-000004.safetensors").write_bytes(b"state at step 4")
    (out / "log.jsonl").write_text('{"step": 1}\n')
    store.put_job(job)
    store.close()
    return job


def test_migrate_copies_everything_once(tmp_path: Path, pg_url: str, capsys) -> None:
    job = fill(tmp_path / "data")
    assert main(["store", "migrate", "--from", str(tmp_path / "data"), "--to", pg_url]) == 0
    assert "copied 2 concepts and 1 jobs" in capsys.readouterr().out
    target = open_store(pg_url, tmp_path / "scratch")
    try:
        acme, globex = (target.get_concept(t, "<x>") for t in ("acme", "globex"))
        assert acme and globex and acme.sha256 != globex.sha256
        assert hashlib.sha256(target.concept_data(acme)).hexdigest() == acme.sha256
        moved = target.get_job(job.job_id)
        assert moved and (moved.state, moved.attempts, moved.tenant) == (
            JobState.RUNNING,
            1,
            "acme",
        )
        assert moved.worker == "" and moved.lease_expires_at is None  # any worker may take it
        folder = target.files.checkout(job.job_id)
        assert sorted(p.name for p in (folder / "images").iterdir()) == [
            "000.img",
            "000.txt",
            "001.img",
            "001.txt",
        ]
        assert (
            folder / "out" / "checkpoints" / "step-000004.safetensors"
        ).read_bytes() == b"state at step 4"
        claimed = target.claim_job("worker-b", 30.0)
        assert claimed and claimed.job_id == job.job_id and claimed.attempts == 2
    finally:
        target.close()
    # Again: nothing is copied twice.
    assert main(["store", "migrate", "--from", str(tmp_path / "data"), "--to", pg_url]) == 0
    printed = capsys.readouterr().out
    assert "copied 0 concepts and 0 jobs" in printed and printed.count("copied before") == 3


def test_migrate_refuses_a_folder_without_a_database(tmp_path: Path, pg_url: str, capsys) -> None:
    assert main(["store", "migrate", "--from", str(tmp_path), "--to", pg_url]) == 2
    assert "holds no textinv.db" in capsys.readouterr().err
