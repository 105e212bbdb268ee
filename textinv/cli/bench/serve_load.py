"""The load of ``textinv bench serve``: closed-loop clients, open-loop Poisson arrivals, and the
summary of one measured point (p50/p95/p99, throughput, the share of refused and failed requests).

- **Closed loop**: ``concurrency`` clients, each sending its next request when the last returns.
  The offered load adapts to the server, so it shows the best throughput at that concurrency.
- **Open loop**: requests arrive as a Poisson process (exponential gaps from a seeded RNG) and are
  sent at their scheduled times whatever has completed, from a pool with a thread per request (up
  to ``MAX_OPEN_WORKERS``). Latency runs from the *scheduled* send time, so time spent waiting for
  a thread counts too and coordinated omission cannot hide queueing.

A request refused with ``RESOURCE_EXHAUSTED`` (the server's queue was full) is counted apart from
other failures (deadline, unavailable, internal): the first is the server protecting itself, the
second is something broken.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import grpc

from textinv_client import GenerateRequest, TextInvClient, TextInvError

MAX_OPEN_WORKERS = 256  # open loop: threads at most; each holds one request in flight
Connect = Callable[[], TextInvClient]  # opens a client of the measured server
Failure = Literal["refused", "failed"]


@dataclass(frozen=True)
class LoadResult:
    """One measured point. ``failures`` counts every failed request, the refused ones included."""

    mode: str  # "in-process", "grpc" (batching on, or a running server), "unbatched", "open-loop"
    concurrency: int  # closed loop: the clients; open loop: the most requests in flight at once
    requests: int  # sent: succeeded + failures
    failures: int
    p50_ms: float  # latency of the successful requests
    p95_ms: float
    p99_ms: float
    throughput_rps: float  # successful requests per second of wall time
    latencies_ms: tuple[float, ...] = ()  # every successful request, in completion order
    refused: int = 0  # of the failures: RESOURCE_EXHAUSTED, the server's queue limit
    offered_rps: float | None = None  # open loop: the Poisson arrival rate; None: closed loop

    @property
    def other_failures(self) -> int:
        return self.failures - self.refused

    @property
    def refused_share(self) -> float:
        return self.refused / self.requests if self.requests else 0.0

    @property
    def failed_share(self) -> float:
        """The share of requests that failed for another reason than a full queue."""
        return self.other_failures / self.requests if self.requests else 0.0


def summarize(
    mode: str,
    concurrency: int,
    latencies: Sequence[float],
    wall_s: float,
    *,
    refused: int = 0,
    failed: int = 0,
    offered_rps: float | None = None,
) -> LoadResult:
    """One point from the successful requests' latencies (ms) and the failures' counts."""
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []

    def pick(q: int) -> float:
        return cuts[q - 1] if cuts else (latencies[0] if latencies else 0.0)

    return LoadResult(
        mode=mode,
        concurrency=concurrency,
        requests=len(latencies) + refused + failed,
        failures=refused + failed,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p95_ms=pick(95),
        p99_ms=pick(99),
        throughput_rps=len(latencies) / wall_s if wall_s > 0 else 0.0,
        latencies_ms=tuple(latencies),
        refused=refused,
        offered_rps=offered_rps,
    )


def classify_failure(error: TextInvError) -> Failure:
    """``refused`` for the server's queue limit (RESOURCE_EXHAUSTED), else ``failed``."""
    return "refused" if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED else "failed"


def send(client: TextInvClient, request: GenerateRequest) -> Failure | None:
    """One Generate; None when it succeeded."""
    try:
        client.generate(request)
    except TextInvError as error:
        return classify_failure(error)
    return None


def poisson_schedule(rate_rps: float, count: int, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``count`` Poisson arrivals at ``rate_rps``: the
    running sum of exponential gaps with mean ``1 / rate_rps``, drawn from ``Random(seed)``."""
    if not rate_rps > 0 or rate_rps == float("inf"):
        raise ValueError(f"rate must be a positive number of requests/s, got {rate_rps}")
    if count < 1:
        raise ValueError(f"count must be ≥ 1, got {count}")
    rng = random.Random(seed)
    times, now = [], 0.0
    for _ in range(count):
        now += rng.expovariate(rate_rps)
        times.append(now)
    return times


def peak_in_flight(intervals: Sequence[tuple[float, float]]) -> int:
    """The most ``(start, end)`` intervals open at one instant (one ending as another starts
    does not overlap it)."""
    events = sorted([(end, -1) for _, end in intervals] + [(start, 1) for start, _ in intervals])
    peak = open_now = 0
    for _, step in events:  # at equal times -1 sorts first: the end closes before the start
        open_now += step
        peak = max(peak, open_now)
    return peak


def closed_loop(
    connect: Connect, request: GenerateRequest, concurrency: int, count: int, mode: str
) -> LoadResult:
    """``count`` requests from ``concurrency`` clients, each sending back to back."""
    clients = [connect() for _ in range(concurrency)]
    per_client = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]

    def run(index: int) -> tuple[list[float], list[Failure]]:
        latencies: list[float] = []
        failures: list[Failure] = []
        for _ in range(per_client[index]):
            begin = time.perf_counter()
            failure = send(clients[index], request)
            if failure is None:
                latencies.append((time.perf_counter() - begin) * 1000)
            else:
                failures.append(failure)
        return latencies, failures

    try:
        clients[0].generate(
            request
        )  # warm-up, not counted (its error ends the run, clients closed)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            outcomes = list(pool.map(run, range(concurrency)))
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            client.close()
    latencies = [ms for done, _ in outcomes for ms in done]
    failures = [failure for _, failed in outcomes for failure in failed]
    return summarize(
        mode, concurrency, latencies, wall,
        refused=failures.count("refused"), failed=failures.count("failed"),
    )  # fmt: skip


# One open-loop request: (scheduled send time, completion time, failure or None), perf_counter s.
Timing = tuple[float, float, Failure | None]


def open_loop(
    connect: Connect,
    request: GenerateRequest,
    rate_rps: float,
    count: int,
    *,
    seed: int = 0,
    mode: str = "open-loop",
) -> LoadResult:
    """``count`` requests arriving at ``rate_rps`` (Poisson, seeded), each sent at its time."""
    schedule = poisson_schedule(rate_rps, count, seed)
    # One channel: gRPC multiplexes the concurrent calls over one HTTP/2 connection.
    with connect() as client:
        client.generate(request)  # warm-up, not counted
        with ThreadPoolExecutor(min(count, MAX_OPEN_WORKERS)) as pool:
            origin = time.perf_counter()
            futures = [_send_at(pool, client, request, origin + at) for at in schedule]
            timings = [future.result() for future in futures]
    latencies = [(end - due) * 1000 for due, end, failure in timings if failure is None]
    failures = [failure for _, _, failure in timings]
    wall = max(end for _, end, _ in timings) - origin
    return summarize(
        mode, peak_in_flight([(due, end) for due, end, _ in timings]), latencies, wall,
        refused=failures.count("refused"), failed=failures.count("failed"), offered_rps=rate_rps,
    )  # fmt: skip


def _send_at(
    pool: ThreadPoolExecutor, client: TextInvClient, request: GenerateRequest, due: float
) -> Future[Timing]:
    """Sleep until ``due``, then hand the request to the pool without waiting for it."""
    time.sleep(max(0.0, due - time.perf_counter()))

    def call() -> Timing:
        failure = send(client, request)
        return due, time.perf_counter(), failure

    return pool.submit(call)
