"""``textinv bench serve``: latency and throughput of the real server under load, the way serving
engineers read it.

With the same model, request and settings, one run measures:
1. in-process runtime calls (the pipeline called directly), the baseline for gRPC's overhead;
2. closed loop: the server with micro-batching at each concurrency (default 1, 2, 4, 8, 16
   clients, each sending back to back);
3. open loop: Poisson arrivals at a few rates (``--rates``, or 0.5, 1, 1.5 and 2× the closed-loop
   throughput at concurrency 1), each request sent at its scheduled time and timed from it;
4. the server with batching switched off (``max_batch`` 1), closed loop at the same concurrencies.

At every point it prints p50/p95/p99 latency, throughput and the shares of refused
(RESOURCE_EXHAUSTED, the queue limit) and otherwise failed requests, then the ratios the targets
name; ``--plot PATH`` draws p50 and p99 latency against throughput (``serve_plot``). With
``--server HOST:PORT`` (and ``--api-key``, ``--tls*``) it measures a server that is already
running: no server is started, so 1 and 4 are skipped, and the request's size is the server's
native one from GetServerInfo. The load itself lives in ``serve_load``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from textinv.cli.bench.serve_load import (
    Connect,
    LoadResult,
    closed_loop,
    open_loop,
    summarize,
)
from textinv.cli.bench.serve_print import print_results
from textinv.hardware import cpu_features
from textinv_client import GenerateRequest, ServerInfo, TextInvClient
from textinv_client.connection_flags import GROUP, ConnectionFlags
from textinv_client.flags import add_flags, flag, from_flags
from textinv_server.background import BackgroundServer
from textinv_server.config import BatchingConfig, ServerConfig
from textinv_server.requests import GenerationRequest

__all__ = [
    "LoadResult",
    "ServeBenchSettings",
    "add_serve_bench",
    "measure_serve",
    "open_loop_rates",
    "parse_levels",
    "parse_rates",
    "run_serve_bench",
]

RATE_FACTORS = (0.5, 1.0, 1.5, 2.0)  # open loop: × the closed-loop throughput at concurrency 1
TIMEOUT_S = 600.0  # per call: a queue under 2× overload on a CPU may take minutes to drain
PROMPT = "a photo of a red star"
Say = Callable[[str], object]


@dataclass(frozen=True)
class ServeBenchSettings:
    """One ``bench serve`` run: the same request closed loop at each concurrency and open loop at
    each rate, batching on and off."""

    model: str | None = field(  # a model folder the server loads; None: the embedded model
        metadata=flag("a diffusers model folder (default: the embedded model)")
    )
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)  # flag: --concurrency 1,2,4,8,16
    requests: int = field(default=32, metadata=flag("requests per measurement"))
    steps: int = field(default=10, metadata=flag("denoising steps per request"))
    resolution: int | None = field(  # None: native
        default=None, metadata=flag("pixels; default: native")
    )
    max_batch: int = field(default=8, metadata=flag("requests per batch, batching on"))
    batch_wait_ms: float = field(
        default=10.0, metadata=flag("how long a batch waits to fill, batching on")
    )
    max_queue: int = field(
        default=256, metadata=flag("requests that may wait in the started server; more are refused")
    )
    rates: tuple[float, ...] | None = None  # flag: --rates 2,4.5 (req/s); None: RATE_FACTORS
    rate_factors: tuple[float, ...] = RATE_FACTORS  # () and no rates: no open loop
    seed: int = field(default=0, metadata=flag("seed of the open-loop arrival times"))

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency values must be ≥ 1, got {self.concurrency}")
        if self.requests < 1:
            raise ValueError(f"requests must be ≥ 1, got {self.requests}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be ≥ 1, got {self.max_queue}")
        for name, values in (("rates", self.rates or ()), ("rate_factors", self.rate_factors)):
            if any(not (math.isfinite(v) and v > 0) for v in values):
                raise ValueError(f"{name} must be positive numbers, got {values}")


def add_serve_bench(subparsers: argparse._SubParsersAction) -> None:
    bench = subparsers.add_parser("serve", help="server latency and throughput under load")
    add_flags(bench, ServeBenchSettings)
    bench.add_argument(
        "--concurrency", default="1,2,4,8,16", help="closed loop: comma-separated client counts"
    )
    bench.add_argument(
        "--rates",
        help="open loop: comma-separated Poisson arrival rates in req/s (default: 0.5, 1, 1.5 "
        "and 2× the closed-loop throughput at concurrency 1)",
    )
    bench.add_argument("--json", type=Path, help="also write the results as JSON")
    bench.add_argument("--plot", type=Path, help="write p50/p99 latency vs throughput as a PNG")
    bench.add_argument_group(GROUP, "omit --server to start a server here and measure that")
    add_flags(bench, ConnectionFlags)
    bench.set_defaults(func=run_serve_bench)


def run_serve_bench(args: argparse.Namespace) -> int:
    levels, rates = parse_levels(args.concurrency), parse_rates(args.rates)
    settings = from_flags(ServeBenchSettings, args, concurrency=levels, rates=rates)
    connection = from_flags(ConnectionFlags, args) if args.server else None
    if connection is not None and settings.model is not None:
        raise ValueError("--model is the model of a server started here; --server measures a "
                         "running server's own model, so give one or the other")  # fmt: skip
    print(f"machine: {cpu_features().describe()}; torch threads: {torch.get_num_threads()}")
    results = measure_serve(settings, connection, progress=print)
    print_results(results, list(settings.concurrency), own_server=connection is None)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.plot:  # imported here: matplotlib loads only when a plot is asked for
        from textinv.cli.bench.serve_plot import latency_vs_throughput

        title = f"Latency vs throughput: {settings.steps} steps, {settings.requests} req/point"
        print(f"plot: {latency_vs_throughput(results, args.plot, title)}")
    return 0


def parse_levels(text: str) -> tuple[int, ...]:
    """``--concurrency 1,2,4``: client counts, each ≥ 1."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--concurrency must be comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ValueError(f"--concurrency values must be ≥ 1, got {text!r}")
    return levels


def parse_rates(text: str | None) -> tuple[float, ...] | None:
    """``--rates 2,4.5``: arrival rates in req/s, each positive; None (not given) stays None."""
    if text is None:
        return None
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers (req/s), got {text!r}") from None
    if not rates or any(not (math.isfinite(r) and r > 0) for r in rates):
        raise ValueError(f"--rates values must be positive req/s, got {text!r}")
    return rates


def measure_serve(
    settings: ServeBenchSettings,
    connection: ConnectionFlags | None = None,
    progress: Say | None = None,
) -> list[LoadResult]:
    """Every point of the run. ``connection``: measure that running server instead of starting
    one (then no in-process and no batching-off rows); ``progress`` hears what runs next."""
    say = progress or (lambda _text: None)
    if connection is None:
        return _measure_own_server(settings, say)
    return _measure_running_server(settings, connection, say)


def open_loop_rates(settings: ServeBenchSettings, closed: list[LoadResult]) -> tuple[float, ...]:
    """``settings.rates``, else ``rate_factors`` × the closed-loop throughput at concurrency 1
    (none when nothing succeeded there)."""
    if settings.rates is not None:
        return settings.rates
    if not settings.rate_factors:
        return ()
    base = next(r.throughput_rps for r in closed if r.mode == "grpc" and r.concurrency == 1)
    return tuple(round(base * factor, 3) for factor in settings.rate_factors if base > 0)


def _measure_own_server(settings: ServeBenchSettings, say: Say) -> list[LoadResult]:
    """In-process, then the server with batching (closed and open loop) and without."""
    levels, count = list(settings.concurrency), settings.requests
    say(f"target: a server started here (model: {settings.model or 'embedded'}), batching "
        f"max_batch {settings.max_batch}, wait {settings.batch_wait_ms:g} ms, queue limit "
        f"{settings.max_queue}; then the same with batching off")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        base = ServerConfig(model=settings.model, data_dir=Path(scratch) / "on", port=0)
        on, off = Path(scratch) / "on", Path(scratch) / "off"
        batched = _with_batching(base, settings.max_batch, settings.batch_wait_ms, on, settings)
        unbatched = _with_batching(base, 1, 0.0, off, settings)
        with BackgroundServer(batched) as server:
            say(f"precision: {server.running.service.pipeline.backend.precision.describe()}")
            side = settings.resolution or server.running.service.pipeline.host.default_resolution
            request = _request(settings, side, side, say)
            connect = _local_connector(server.target)
            say("in-process vs gRPC at concurrency 1, interleaved")
            results = _in_process_and_grpc(server, request, count)
            results += _closed_sweep(
                connect, request, [c for c in levels if c != 1], count, "grpc", say
            )
            results += _open_sweep(settings, connect, request, results, say)
        with BackgroundServer(unbatched) as server:
            connect = _local_connector(server.target)
            results += _closed_sweep(connect, request, levels, count, "unbatched", say)
    return results


def _measure_running_server(
    settings: ServeBenchSettings, connection: ConnectionFlags, say: Say
) -> list[LoadResult]:
    """Closed, then open loop against ``connection.server``, at the size it reports as native."""
    connect = replace(connection, timeout=connection.timeout or TIMEOUT_S).client
    with connect() as client:
        info = client.get_server_info()
    say(_describe_running(connection.server, info))
    native = info.model
    width = settings.resolution or (native.native_width if native else None)
    height = settings.resolution or (native.native_height if native else None)
    request = _request(settings, width, height, say)
    levels = list(settings.concurrency)
    if settings.rates is None and 1 not in levels:
        levels.insert(0, 1)  # the open-loop rates are multiples of its throughput
    results = _closed_sweep(connect, request, levels, settings.requests, "grpc", say)
    return results + _open_sweep(settings, connect, request, results, say)


def _describe_running(target: str, info: ServerInfo) -> str:
    model = (
        f"model {info.model.name or '(unnamed)'} ({info.model.family})"
        if info.model
        else "unknown model"
    )
    limits = info.limits
    why = f" ({info.precision_reason})" if info.precision_reason else ""
    return (
        f"target: the running server at {target}: {model}, backend {info.backend} on "
        f"{info.device} in {info.precision or '(unreported)'}{why}; its batching: max_batch "
        f"{limits.max_batch}, wait {limits.batch_wait_ms} ms, queue limit {limits.max_queue}. "
        "No server started here, so the in-process baseline and the batching-off comparison are "
        "skipped."
    )


def _closed_sweep(
    connect: Connect, request: GenerateRequest, levels: list[int], count: int, mode: str, say: Say
) -> list[LoadResult]:
    results = []
    for level in levels:
        say(f"closed loop ({mode}): {level} client(s)")
        results.append(closed_loop(connect, request, level, count, mode))
    return results


def _open_sweep(
    settings: ServeBenchSettings,
    connect: Connect,
    request: GenerateRequest,
    closed: list[LoadResult],
    say: Say,
) -> list[LoadResult]:
    rates, count = open_loop_rates(settings, closed), settings.requests
    if settings.rates is None and settings.rate_factors:
        factors = ", ".join(f"{f:g}" for f in settings.rate_factors)
        say(f"open loop: {factors} × the closed-loop throughput at concurrency 1")
    results = []
    for rate in rates:
        say(f"open loop: Poisson arrivals at {rate:g} req/s (seed {settings.seed})")
        results.append(open_loop(connect, request, rate, count, seed=settings.seed))
    return results


def _local_connector(target: str) -> Connect:
    return lambda: TextInvClient(target, timeout=TIMEOUT_S)


def _with_batching(
    base: ServerConfig, max_batch: int, wait_ms: float, data: Path, settings: ServeBenchSettings
) -> ServerConfig:
    batching = BatchingConfig(max_batch, wait_ms, max_queue=settings.max_queue)
    return replace(base, data_dir=data, batching=batching)


def _request(
    settings: ServeBenchSettings, width: int | None, height: int | None, say: Say
) -> GenerateRequest:
    request = GenerateRequest(PROMPT, steps=settings.steps, seed=0, width=width, height=height)
    size = f"{width}×{height} px" if width and height else "the server's default size"
    say(f"request: {PROMPT!r}, {size}, {settings.steps} steps; {settings.requests} per point")
    return request


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
    with TextInvClient(server.target, timeout=TIMEOUT_S) as client:
        pipeline(plain)  # warm-up, both paths
        client.generate(request)
        started = time.perf_counter()
        for _ in range(count):
            local_ms.append(_timed_ms(lambda: pipeline(plain)))
            remote_ms.append(_timed_ms(lambda: client.generate(request)))
        wall = time.perf_counter() - started
    # Each path had half of the wall time.
    return [
        summarize("in-process", 1, local_ms, sum(local_ms) / 1000 or wall / 2),
        summarize("grpc", 1, remote_ms, sum(remote_ms) / 1000 or wall / 2),
    ]


def _timed_ms(call: Callable[[], object]) -> float:
    begin = time.perf_counter()
    call()
    return (time.perf_counter() - begin) * 1000
