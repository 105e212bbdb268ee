"""``textinv bench serve``: latency and throughput of the real server under concurrent clients.

In one run it measures, with the same model, request and settings:
1. in-process runtime calls (the pipeline called directly), the baseline for gRPC's overhead;
2. the server with micro-batching, at each concurrency;
3. the server with batching switched off (``max_batch`` 1), at the same concurrencies;
and prints p50/p95/p99 latency, throughput, failures, and the ratios the targets name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from textinv_client import GenerateRequest, TextInvClient, TextInvError
from textinv_client.flags import add_flags, flag, from_flags
from textinv_server.background import BackgroundServer
from textinv_server.config import BatchingConfig, ServerConfig
from textinv_server.requests import GenerationRequest


@dataclass(frozen=True)
class LoadResult:
    mode: str
    concurrency: int
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    latencies_ms: tuple[float, ...] = ()  # every successful request, in completion order


@dataclass(frozen=True)
class ServeBenchSettings:
    """One ``bench serve`` run: the same request at each concurrency, batching on and off."""

    model: str | None = field(  # a model folder the server loads; None: the embedded model
        metadata=flag("a diffusers model folder (default: the embedded model)")
    )
    concurrency: tuple[int, ...] = (1, 4, 8, 16)  # flag: --concurrency 1,4,8,16
    requests: int = field(default=32, metadata=flag("requests per measurement"))
    steps: int = field(default=10, metadata=flag("denoising steps per request"))
    resolution: int | None = field(  # None: native
        default=None, metadata=flag("pixels; default: native")
    )
    max_batch: int = field(default=8, metadata=flag("requests per batch, batching on"))
    batch_wait_ms: float = field(
        default=10.0, metadata=flag("how long a batch waits to fill, batching on")
    )

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency values must be ≥ 1, got {self.concurrency}")
        if self.requests < 1:
            raise ValueError(f"requests must be ≥ 1, got {self.requests}")


def add_serve_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("serve", help="server latency and throughput under load")
    add_flags(bench, ServeBenchSettings)
    bench.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    bench.add_argument("--json", type=Path, help="also write the results as JSON")
    bench.set_defaults(func=run_serve_bench)


def run_serve_bench(args: argparse.Namespace) -> int:
    settings = from_flags(
        ServeBenchSettings, args, concurrency=tuple(_parse_levels(args.concurrency))
    )
    results = measure_serve(settings)
    _print(results, list(settings.concurrency))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0


def measure_serve(settings: ServeBenchSettings) -> list[LoadResult]:
    """In-process, then the server with batching and without, at each concurrency."""
    levels, count = list(settings.concurrency), settings.requests
    with tempfile.TemporaryDirectory() as scratch:
        base = ServerConfig(model=settings.model, data_dir=Path(scratch) / "on", port=0)
        on = Path(scratch) / "on"
        batched = _with_batching(base, settings.max_batch, settings.batch_wait_ms, on)
        unbatched = _with_batching(base, 1, 0.0, Path(scratch) / "off")
        results: list[LoadResult] = []
        with BackgroundServer(batched) as server:
            request = _request(settings, server)
            results += _in_process_and_grpc(server, request, count)
            results += [_drive(server.target, request, c, count, "grpc") for c in levels if c != 1]
        with BackgroundServer(unbatched) as server:
            results += [_drive(server.target, request, c, count, "unbatched") for c in levels]
    return results


def _parse_levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency values must be ≥ 1, got {text!r}")
    return levels


def _with_batching(base: ServerConfig, max_batch: int, wait_ms: float, data: Path) -> ServerConfig:
    return replace(base, data_dir=data, batching=BatchingConfig(max_batch, wait_ms, max_queue=256))


def _request(settings: ServeBenchSettings, server: BackgroundServer) -> GenerateRequest:
    side = settings.resolution or server.running.service.pipeline.host.default_resolution
    return GenerateRequest(
        "a photo of a red star", steps=settings.steps, seed=0, width=side, height=side
    )


def _in_process_and_grpc(
    server: BackgroundServer, request: GenerateRequest, count: int
) -> list[LoadResult]:
    """The runtime called directly (no gRPC, no queue) and the same request over gRPC, one at a
    time and interleaved, so drifting machine load falls on both alike."""
    pipeline = server.running.service.pipeline
    plain = GenerationRequest(
        prompt=request.prompt,
        steps=request.steps or 10,
        seed=0,
        width=request.width,
        height=request.height,
    )
    local_ms: list[float] = []
    remote_ms: list[float] = []
    with TextInvClient(server.target, timeout=600) as client:
        pipeline(plain)  # warm-up, both paths
        client.generate(request)
        started = time.perf_counter()
        for _ in range(count):
            local_ms.append(_timed_ms(lambda: pipeline(plain)))
            remote_ms.append(_timed_ms(lambda: client.generate(request)))
        wall = time.perf_counter() - started
    # Each path had half of the wall time.
    return [
        _summarize("in-process", 1, local_ms, 0, sum(local_ms) / 1000 or wall / 2),
        _summarize("grpc", 1, remote_ms, 0, sum(remote_ms) / 1000 or wall / 2),
    ]


def _timed_ms(call: Callable[[], object]) -> float:
    begin = time.perf_counter()
    call()
    return (time.perf_counter() - begin) * 1000


def _drive(
    target: str, request: GenerateRequest, concurrency: int, count: int, mode: str
) -> LoadResult:
    """``count`` requests from ``concurrency`` clients, each sending back to back."""
    clients = [TextInvClient(target, timeout=600) for _ in range(concurrency)]
    clients[0].generate(request)  # warm-up
    per_client = [count // concurrency + (i < count % concurrency) for i in range(concurrency)]

    def run(index: int) -> tuple[list[float], int]:
        latencies, failures = [], 0
        for _ in range(per_client[index]):
            begin = time.perf_counter()
            try:
                clients[index].generate(request)
            except TextInvError:
                failures += 1
                continue
            latencies.append((time.perf_counter() - begin) * 1000)
        return latencies, failures

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(run, range(concurrency)))
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    latencies = [ms for lat, _ in outcomes for ms in lat]
    return _summarize(mode, concurrency, latencies, sum(f for _, f in outcomes), wall)


def _summarize(
    mode: str, concurrency: int, latencies: list[float], failures: int, wall_s: float
) -> LoadResult:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []
    pick = (lambda q: cuts[q - 1]) if cuts else (lambda q: latencies[0] if latencies else 0.0)
    return LoadResult(
        mode=mode,
        concurrency=concurrency,
        requests=len(latencies) + failures,
        failures=failures,
        p50_ms=statistics.median(latencies) if latencies else 0.0,
        p95_ms=pick(95),
        p99_ms=pick(99),
        throughput_rps=len(latencies) / wall_s if wall_s > 0 else 0.0,
        latencies_ms=tuple(latencies),
    )


def _print(results: list[LoadResult], levels: list[int]) -> None:
    print(
        f"{'mode':<11} {'conc':>4} {'reqs':>5} {'fail':>4} {'p50 ms':>9} {'p95 ms':>9} "
        f"{'p99 ms':>9} {'req/s':>7}"
    )
    for r in results:
        print(
            f"{r.mode:<11} {r.concurrency:>4} {r.requests:>5} {r.failures:>4} {r.p50_ms:>9.1f} "
            f"{r.p95_ms:>9.1f} {r.p99_ms:>9.1f} {r.throughput_rps:>7.2f}"
        )
    by_key: dict[tuple[str, int], Any] = {(r.mode, r.concurrency): r for r in results}
    local = by_key[("in-process", 1)]
    if ("grpc", 1) in by_key:
        remote = by_key[("grpc", 1)]
        overhead = (remote.p50_ms - local.p50_ms) / remote.p50_ms
        print(
            f"gRPC overhead at concurrency 1: {overhead:+.1%} of p50 latency "
            f"({remote.p50_ms:.1f} ms vs {local.p50_ms:.1f} ms in-process; target ≤ 5%)"
        )
    for level in levels:
        on, off = by_key.get(("grpc", level)), by_key.get(("unbatched", level))
        if on and off and off.throughput_rps > 0:
            print(
                f"batching at concurrency {level}: {on.throughput_rps / off.throughput_rps:.2f}× "
                f"the throughput of no batching ({on.throughput_rps:.2f} vs "
                f"{off.throughput_rps:.2f} req/s; target ≥ 1.5× at 8)"
            )
    print(f"failed requests: {sum(r.failures for r in results)} (target 0 below the queue limit)")
