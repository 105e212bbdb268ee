"""``textinv serve`` as a real process: a ``kill -9`` during a job, the resume, a clean SIGTERM."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.integration.hostile_server import wait_for_serving_port
from textinv.concepts import Concept, concept_to_bytes, parse_concept
from textinv.trainer import InvertConfig, invert, iter_log
from textinv_client import InversionParams, JobState, TextInvClient, TrainingImage

REPO = Path(__file__).resolve().parents[2]


class ServeProcess:
    """``python -m textinv serve`` on a free port; ``target`` once it reports SERVING."""

    def __init__(self, model: Path, data: Path) -> None:
        command = [sys.executable, "-m", "textinv", "serve", "--model", str(model)]
        command += ["--port", "0", "--data", str(data), "--grace", "2"]
        environment = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=environment,
        )
        self.target = wait_for_serving_port(self.process, timeout_s=120)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        if serve.process.poll() is None:
            serve.kill()


def training_images(count: int) -> list[TrainingImage]:
    images = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(TrainingImage(data=buffer.getvalue(), filename=f"{index}.png"))
    return images


def wait_for(textinv: TextInvClient, job_id: str, done: object, timeout_s: float = 240) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = textinv.get_job(job_id)
        if done(job):  # type: ignore[operator]
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not get there: {textinv.get_job(job_id)}")


def register_concept_before(textinv: TextInvClient, width: int) -> bytes:
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(7))
    data = concept_to_bytes(Concept("<before-kill>", vectors))
    textinv.register_concept(data, filename="before.safetensors")
    return data


def uninterrupted_vectors(data: Path, job_id: str, model: Any, out: Path) -> torch.Tensor:
    """The same job's parameters and images, trained in one go here (one thread, as the
    server's job workers train)."""
    with sqlite3.connect(data / "textinv.db") as db:
        (stored,) = db.execute("SELECT params FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    images = data / "jobs" / job_id / "images"
    config = InvertConfig(**json.loads(stored), images=str(images), out=str(out))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return invert(config, model=model).vectors
    finally:
        torch.set_num_threads(threads)


def test_kill_9_during_a_job_then_resume(
    tiny_model: Any, tiny_model_dir: Path, tmp_path: Path, processes: list[ServeProcess]
) -> None:
    data = tmp_path / "data"
    processes.append(ServeProcess(tiny_model_dir, data))
    params = InversionParams(
        token="<killed-toy>", init_text="toy", steps=60, checkpoint_every=10, seed=3
    )
    with TextInvClient(processes[0].target) as textinv:
        register_concept_before(textinv, tiny_model.text_width)
        job = textinv.create_inversion_job(training_images(3), params)
        running = wait_for(textinv, job.job_id, lambda j: j.step >= 25 or j.state.is_terminal)
        assert running.state is JobState.RUNNING, running  # type: ignore[attr-defined]
    processes[0].kill()  # no chance to checkpoint or close anything

    processes.append(ServeProcess(tiny_model_dir, data))
    with TextInvClient(processes[1].target) as textinv:
        finished = wait_for(textinv, job.job_id, lambda j: j.state.is_terminal)
        assert finished.state is JobState.SUCCEEDED, finished  # type: ignore[attr-defined]
        tokens = [c.token for c in textinv.list_concepts()]
        assert tokens == ["<before-kill>", "<killed-toy>"]
        learned = parse_concept(textinv.download_job_concept(job.job_id), "job file")
    out = data / "jobs" / job.job_id / "out"
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["resumed_from_step"] >= 20  # from a checkpoint, not from the start
    assert [record["step"] for record in iter_log(out)] == list(range(1, 61))  # each once
    reference = uninterrupted_vectors(data, job.job_id, tiny_model, tmp_path / "reference")
    assert torch.equal(learned.vectors, reference)

    processes[1].process.send_signal(signal.SIGTERM)
    assert processes[1].process.wait(60) == 0  # a graceful shutdown exits cleanly


def test_a_job_cancelled_before_kill_9_stays_cancelled(
    tiny_model_dir: Path, tmp_path: Path, processes: list[ServeProcess]
) -> None:
    data = tmp_path / "data"
    processes.append(ServeProcess(tiny_model_dir, data))
    params = InversionParams(token="<cancelled>", init_text="toy", steps=5000, seed=3)
    with TextInvClient(processes[0].target) as textinv:
        job = textinv.create_inversion_job(training_images(2), params)
        wait_for(textinv, job.job_id, lambda j: j.step >= 1)
        textinv.cancel_job(job.job_id)
    processes[0].kill()  # at once: the cancel is only as durable as the database

    processes.append(ServeProcess(tiny_model_dir, data))
    with TextInvClient(processes[1].target) as textinv:
        time.sleep(1.0)  # a resumed job would be RUNNING by now
        assert textinv.get_job(job.job_id).state is JobState.CANCELLED
        assert textinv.list_concepts() == []


def test_a_second_server_on_the_same_data_folder_fails_at_start(
    tiny_model_dir: Path, tmp_path: Path, processes: list[ServeProcess]
) -> None:
    data = tmp_path / "data"
    processes.append(ServeProcess(tiny_model_dir, data))
    command = [sys.executable, "-m", "textinv", "serve", "--model", str(tiny_model_dir)]
    command += ["--port", "0", "--data", str(data)]
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode != 0
    assert f"the data folder {str(data)!r} is in use" in second.stderr
    assert "Traceback" not in second.stderr
