"""``textinv serve`` as a real process: a ``kill -9`` during a job, the resume, a clean SIGTERM."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
        self.target = self._wait_for_port(timeout_s=120)

    def _wait_for_port(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"textinv serve exited with {self.process.returncode}")
            found = re.search(r"serving on ([\d.]+:\d+)", line)
            if found:
                return found.group(1)
        raise TimeoutError("textinv serve did not report its port")

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


def test_kill_9_during_a_job_then_resume(
    tiny_model_dir: Path, tmp_path: Path, processes: list[ServeProcess]
) -> None:
    data = tmp_path / "data"
    processes.append(ServeProcess(tiny_model_dir, data))
    params = InversionParams(
        token="<killed-toy>", init_text="toy", steps=120, checkpoint_every=10, seed=3
    )
    with TextInvClient(processes[0].target) as textinv:
        job = textinv.create_inversion_job(training_images(3), params)
        running = wait_for(textinv, job.job_id, lambda j: j.step >= 25 or j.state.is_terminal)
        assert running.state is JobState.RUNNING, running  # type: ignore[attr-defined]
    processes[0].kill()  # no chance to checkpoint or close anything

    processes.append(ServeProcess(tiny_model_dir, data))
    with TextInvClient(processes[1].target) as textinv:
        finished = wait_for(textinv, job.job_id, lambda j: j.state.is_terminal)
        assert finished.state is JobState.SUCCEEDED, finished  # type: ignore[attr-defined]
        assert [c.token for c in textinv.list_concepts()] == ["<killed-toy>"]
    resolved = json.loads((data / "jobs" / job.job_id / "out" / "config.json").read_text())
    assert resolved["resumed_from_step"] >= 20  # from a checkpoint, not from the start

    processes[1].process.send_signal(signal.SIGTERM)
    assert processes[1].process.wait(60) == 0  # a graceful shutdown exits cleanly
