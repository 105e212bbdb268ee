"""Prometheus metrics: request latency per RPC and status, calls refused per RPC and reason, queue
depth, batch sizes, step time, and jobs by state. Served on ``--metrics-port`` by
``prometheus_client``'s HTTP server.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUEST_SECONDS = Histogram(
    "textinv_request_seconds", "RPC latency", ["method", "code"], buckets=_LATENCY_BUCKETS
)
QUEUE_DEPTH = Gauge("textinv_queue_depth", "Generation requests waiting for a batch")
BATCH_SIZE = Histogram(
    "textinv_batch_size", "Requests per generation batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32)
)
STEP_SECONDS = Histogram(
    "textinv_denoising_step_seconds",
    "Time of one denoising step of a batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOBS = Gauge("textinv_jobs", "Inversion jobs by state", ["state"])
REJECTED = Counter("textinv_rejected_requests_total", "Requests refused at once", ["reason"])
# Every label value comes from the server's code (its RPC names, its error types), never from a
# caller, so a caller cannot grow the registry: an unknown method is counted as "unknown".
REFUSED = Counter(
    "textinv_refused_calls_total",
    "Calls refused before their work (UNAUTHENTICATED, RESOURCE_EXHAUSTED), by RPC and reason",
    ["method", "reason"],
)


def observe_request(method: str, code: grpc.StatusCode, seconds: float) -> None:
    REQUEST_SECONDS.labels(method=method, code=code.name).observe(seconds)


def count_refusal(method: str, reason: str) -> None:
    REFUSED.labels(method=method, reason=reason).inc()


def serve_metrics(port: int, host: str = "127.0.0.1") -> WSGIServer:
    """Expose ``/metrics`` over HTTP on ``port`` (0: a free one) in a daemon thread; the caller
    reads ``server_port`` and calls ``shutdown()`` when it stops."""
    server, _ = start_http_server(port, addr=host)
    return server
