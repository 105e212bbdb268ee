"""Real ``textinv serve`` replicas and ``textinv worker`` processes on one PostgreSQL store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.integration.hostile_server import wait_for_serving_port

REPO = Path(__file__).resolve().parents[2]
ENVIRONMENT = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "TEXTINV_TEST_THREADS": "1"}


class Process:
    """``python -m textinv ARGS`` with its stdout piped; killed at the end of the test."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "textinv", *self.args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=os.environ | ENVIRONMENT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        """``kill -9``: no checkpoint, no lease given back, nothing closed."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


class Replica(Process):
    """``textinv serve`` on a port (0: a free one); ``target`` once it reports SERVING."""

    def __init__(self, model: Path, data: Path, store: str, *extra: str, port: int = 0) -> None:
        super().__init__(
            [
                *("serve", "--model", str(model), "--data", str(data), "--store", store),
                *("--port", str(port), "--grace", "2", *extra),
            ]
        )
        self.target = ""

    def wait_serving(self, timeout_s: float = 180) -> Replica:
        self.target = wait_for_serving_port(self.process, timeout_s)
        return self

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])


class Worker(Process):
    """``textinv worker``; ``wait_ready`` once it claims jobs."""

    def __init__(self, model: Path, data: Path, store: str, *extra: str) -> None:
        super().__init__(
            ["worker", "--model", str(model), "--data", str(data), "--store", store, *extra]
        )

    def wait_ready(self, timeout_s: float = 180) -> Worker:
        deadline = time.monotonic() + timeout_s
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "ready" in line:
                return self
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"textinv worker exited with {self.process.returncode}")
        raise TimeoutError("textinv worker did not report ready")


def eventually(check: Callable[[], object], timeout_s: float = 10.0) -> object:
    """``check()``'s first result that is truthy and raises nothing, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check} did not become true in {timeout_s} s")
        time.sleep(0.02)
