"""The checks every hostile case goes through, and the job helpers the cases share.

``run_and_check`` runs one case under ``HostileServer.run_case`` and fails naming everything that
went wrong at once: a status the contract does not allow, a traceback or a server path in the
details, a health check that stalled, memory past ``RSS_BOUND_KIB``, a server that died.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc

from tests.integration.hostile_cases import OK
from tests.integration.hostile_server import RSS_BOUND_KIB, CaseReport, HostileServer
from textinv_client.pb.v1 import jobs_pb2

STREAMS = ("GenerateStream", "WatchJob")
TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)


def call(server: HostileServer, rpc: str, request: Any) -> Any:
    method = getattr(server.stub, rpc)
    if rpc in STREAMS:
        return list(method(request, timeout=20))
    return method(request, timeout=20)


def cancel_open_jobs(
    server: HostileServer, timeout_s: float = 20, rpc_timeout_s: float = 10
) -> None:
    """Cancel every QUEUED or RUNNING job and wait until each is terminal."""
    states = [jobs_pb2.JOB_STATE_QUEUED, jobs_pb2.JOB_STATE_RUNNING]
    request = jobs_pb2.ListJobsRequest(states=states, page_size=100)
    listed = server.stub.ListJobs(request, timeout=rpc_timeout_s)
    for info in listed.jobs:
        server.stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=info.job_id), timeout=rpc_timeout_s)
    for info in listed.jobs:
        wait_for_job(server, info.job_id, timeout_s, rpc_timeout_s)


def wait_for_job(
    server: HostileServer, job_id: str, timeout_s: float, rpc_timeout_s: float = 10
) -> jobs_pb2.JobInfo:
    deadline = time.monotonic() + timeout_s
    while True:
        info = server.stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=rpc_timeout_s).job
        if info.state in TERMINAL:
            return info
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {jobs_pb2.JobState.Name(info.state)}")
        time.sleep(0.1)


def code_of(report: CaseReport) -> grpc.StatusCode:
    """OK, or the status of the RpcError the case raised; anything else is re-raised."""
    if report.error is None:
        return OK
    if isinstance(report.error, grpc.RpcError):
        return report.error.code()  # type: ignore[no-any-return]
    raise report.error


def problems_of(server: HostileServer, report: CaseReport) -> list[str]:
    """Everything the watcher saw wrong in one case, beyond its status code."""
    found = [f"server died: {report.died}; log tail: {log_tail(server)}"] if report.died else []
    found += report.slow_health[:3]
    if report.rss_growth_kib > RSS_BOUND_KIB:
        found.append(f"resident memory grew by {report.rss_growth_kib / 1024:.0f} MiB")
    if isinstance(report.error, grpc.RpcError):
        details = report.error.details() or ""
        if "Traceback" in details or 'File "' in details:
            found.append(f"details carry a traceback: {details[:300]!r}")
        if str(server.data) in details or "/tmp/" in details or "/work/" in details:
            found.append(f"details carry a server path: {details[:300]!r}")
        if len(details) > 1000:
            found.append(f"details quote {len(details)} characters (a short prefix at most)")
    return found


def log_tail(server: HostileServer, lines: int = 8) -> str:
    tail = server.log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(line[:200] for line in tail)


def run_and_check(
    server: HostileServer, name: str, action: Callable[[], Any], allowed: frozenset[Any]
) -> CaseReport:
    """Run one case under the watcher; fail naming everything that went wrong."""
    report = server.run_case(name, action)
    problems = problems_of(server, report)
    code = code_of(report)
    if code not in allowed:
        details = report.error.details() if isinstance(report.error, grpc.RpcError) else ""
        wanted = sorted(c.name for c in allowed)
        problems.insert(0, f"status {code.name} (allowed {wanted}): {details[:300]!r}")
    assert not problems, f"{name}: " + "; ".join(problems)
    return report
