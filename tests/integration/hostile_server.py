"""A real ``textinv serve`` process watched while one hostile case runs against it.

``HostileServer.run_case`` runs a case on a thread and meanwhile, every 100 ms, asks the standard
grpc.health.v1 service (within a one-second deadline) and reads the server's resident memory from
``/proc/<pid>/status``. Afterwards it checks that the process is still alive. A server that dies is
restarted for the next case, and the case that killed it is named; a server that grows past
``KILL_GROWTH_KIB`` is killed by the suite (so that the machine's OOM killer does not pick a
neighbour) and the case is named the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from textinv_client.pb.v1 import textinv_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
HEALTH_DEADLINE_S = 1.0
RSS_BOUND_KIB = 300 * 1024  # what one case may add to the server's resident memory
KILL_GROWTH_KIB = 3 * 1024 * 1024  # past this the suite kills the server itself
CASE_TIMEOUT_S = 40.0
WEDGED_AFTER_S = 5.0  # health unanswered this long: the server is wedged, and is killed


def wait_for_serving_port(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The ``HOST:PORT`` a ``textinv serve`` process prints once it serves (its stdout a pipe)."""
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise RuntimeError(f"textinv serve exited with {process.returncode}")
        found = re.search(r"serving on ([\d.]+:\d+)", line)
        if found:
            return found.group(1)
    raise TimeoutError("textinv serve did not report its port")


@dataclass
class CaseReport:
    """What the watcher saw during one case."""

    name: str
    result: Any = None  # the action's return value
    error: BaseException | None = None  # what the action raised (a grpc.RpcError, an assert)
    rss_growth_kib: int = 0  # peak during the case minus the value before it
    slow_health: list[str] = field(default_factory=list)  # probes that failed or took > 1 s
    died: str = ""  # why the server was gone afterwards; empty while it lives


class HostileServer:
    """``textinv serve --port 0`` with ``flags``; one per test module."""

    def __init__(self, model: Path, data: Path, log: Path, flags: list[str]) -> None:
        self.model, self.data, self.log, self.flags = model, data, log, flags
        self.killed_by: list[str] = []  # cases that took the server down, in order
        self.reports: list[CaseReport] = []
        self._start()

    # -- the process -----------------------------------------------------------------------

    def _start(self) -> None:
        command = [str(REPO / ".venv" / "bin" / "textinv"), "serve", "--model", str(self.model)]
        command += ["--port", "0", "--data", str(self.data), "--grace", "1", "--no-warmup"]
        environment = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self._log_file = self.log.open("a")
        self.process = subprocess.Popen(
            command + self.flags,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=environment,
        )
        self.target = wait_for_serving_port(self.process, timeout_s=120)
        # Keep reading stdout so that a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        self.stub = textinv_pb2_grpc.TextInvStub(self.channel)
        self._health_channel = grpc.insecure_channel(self.target)
        self.health = health_pb2_grpc.HealthStub(self._health_channel)

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_kib(self) -> int:
        """VmRSS of the server process, in KiB; 0 once it is gone."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return 0
        found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        self.channel.close()
        self._health_channel.close()
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()

    def restart(self) -> None:
        self.stop()
        self._start()

    # -- one case --------------------------------------------------------------------------

    def run_case(self, name: str, action: Callable[[], Any]) -> CaseReport:
        """Run ``action`` on a thread while probing health and memory; see the module doc."""
        if not self.alive():  # an earlier case took it down: start a fresh one
            self.restart()
        report = CaseReport(name)
        before = self.rss_kib()
        peak = before
        worker = threading.Thread(target=_capture, args=(action, report), daemon=True)
        started = answered = time.monotonic()
        worker.start()
        while worker.is_alive() and time.monotonic() - started < CASE_TIMEOUT_S:
            peak = max(peak, self.rss_kib())
            if peak - before > KILL_GROWTH_KIB:
                report.died = f"killed by the suite at {peak // 1024} MiB resident"
            elif self._probe(report):
                answered = time.monotonic()
            elif time.monotonic() - answered > WEDGED_AFTER_S:
                report.died = f"wedged: no health answer for {WEDGED_AFTER_S:.0f} s; killed"
            if report.died:
                self.process.kill()
                self.process.wait(10)  # reaped, so the next case sees it gone and restarts it
                break
            worker.join(0.1)
        worker.join(5 if report.died else max(0.0, CASE_TIMEOUT_S - (time.monotonic() - started)))
        if worker.is_alive():
            report.error = TimeoutError(f"{name} did not finish within {CASE_TIMEOUT_S:.0f} s")
        if self.alive():
            self._probe(report)  # still answering once the case is over
        peak = max(peak, self.rss_kib())
        report.rss_growth_kib = peak - before
        if not self.alive() and not report.died:
            report.died = f"exited with {self.process.returncode}"
        if report.died:
            self.killed_by.append(f"{name}: {report.died}")
        self.reports.append(report)
        return report

    def _probe(self, report: CaseReport) -> bool:
        """One health check within the deadline; False (and noted) when it failed or was slow."""
        started = time.monotonic()
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
        except grpc.RpcError as error:
            report.slow_health.append(f"health failed: {error.code().name}")
            return False
        elapsed = time.monotonic() - started
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            report.slow_health.append(f"health said {reply.status}")
            return False
        if elapsed > HEALTH_DEADLINE_S:
            report.slow_health.append(f"health took {elapsed:.2f} s")
        return True

    def summary(self) -> str:
        if not self.reports:
            return "hostile suite: no cases ran"
        largest = max(self.reports, key=lambda report: report.rss_growth_kib)
        lines = [
            f"hostile suite: {len(self.reports)} cases; largest resident-memory growth "
            f"{largest.rss_growth_kib / 1024:.1f} MiB in {largest.name}",
        ]
        lines += [f"  the server died in {killer}" for killer in self.killed_by]
        return "\n".join(lines)


# The client side must never be the bottleneck: replies (and hostile requests) up to 64 MiB.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def _capture(action: Callable[[], Any], report: CaseReport) -> None:
    try:
        report.result = action()
    except BaseException as error:  # reported by the case, with the server's state
        report.error = error
