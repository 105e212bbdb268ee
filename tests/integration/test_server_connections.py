"""Connections, streams and keys on a real server: the HTTP/2 limits, the API-key checks at start,
and refused calls in the metrics.

The limits of ``textinv_server.app.CONNECTIONS`` are changed for a test (a stream limit of 2, a
connection age of a fraction of a second) so that what they do can be seen in seconds; the server
is otherwise the one ``textinv serve`` starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import ServerThread
from textinv.errors import InvalidInputError
from textinv_client import GenerateRequest, ResourceExhausted, TextInvClient, Unauthenticated
from textinv_client.pb.v1 import server_info_pb2, textinv_pb2_grpc
from textinv_server import app
from textinv_server.config import BatchingConfig

SERVING = health_pb2.HealthCheckResponse.SERVING


def refused(server: ServerThread, method: str, reason: str) -> float:
    """``textinv_refused_calls_total{method, reason}`` read over HTTP (0 if never counted)."""
    url = f"http://127.0.0.1:{server.running.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "textinv_refused_calls_total" and sample.labels == {
                "method": method,
                "reason": reason,
            }:
                return sample.value
    return 0.0


def with_policy(monkeypatch: pytest.MonkeyPatch, **changes: int) -> None:
    monkeypatch.setattr(app, "CONNECTIONS", dataclasses.replace(app.CONNECTIONS, **changes))


# --- API keys ------------------------------------------------------------------------------------


def test_no_api_key_logs_a_warning(
    start_textinv: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="textinv_server.app"):
        start_textinv()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("no API key" in r.getMessage() and "--api-key" in r.getMessage() for r in warnings)


def test_a_key_logs_no_warning(
    start_textinv: Callable[..., ServerThread], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="textinv_server.app"):
        start_textinv(api_keys=("secret",))
    assert not [r for r in caplog.records if "no API key" in r.getMessage()]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (("",), "#1 .* empty or only whitespace"),
        (("good-key", "   "), "#2 .* empty or only whitespace"),
        (("\t\n",), "#1 .* empty or only whitespace"),
        (("two words",), "#1 .* printable ASCII without spaces"),
        (("secret\n",), "#1 .* printable ASCII without spaces"),
    ],
)
def test_an_unusable_key_is_refused_at_start(
    start_textinv: Callable[..., ServerThread],
    tmp_path: Path,
    keys: tuple[str, ...],
    message: str,
) -> None:
    with pytest.raises(InvalidInputError, match=f"--api-key {message}") as refusal:
        start_textinv(api_keys=keys, data_dir=tmp_path / "data")
    assert not [key for key in keys if key.strip() and key.strip() in str(refusal.value)]
    assert not (tmp_path / "data").exists()  # refused before anything was opened


# --- refused calls in the metrics ----------------------------------------------------------------


def test_unauthenticated_calls_are_counted(start_textinv: Callable[..., ServerThread]) -> None:
    server = start_textinv(api_keys=("secret",), metrics_port=0)
    missing = refused(server, "ListConcepts", "missing_key")
    invalid = refused(server, "GetServerInfo", "invalid_key")
    with TextInvClient(server.target) as anonymous, pytest.raises(Unauthenticated):
        anonymous.list_concepts()
    with TextInvClient(server.target, api_key="wrong") as wrong:
        for _ in range(2):
            with pytest.raises(Unauthenticated):
                wrong.get_server_info()
    with TextInvClient(server.target, api_key="secret") as allowed:
        allowed.get_server_info()  # an accepted call is not counted
    assert refused(server, "ListConcepts", "missing_key") == missing + 1
    assert refused(server, "GetServerInfo", "invalid_key") == invalid + 2


def test_a_method_the_server_lacks_is_counted_as_unknown(
    start_textinv: Callable[..., ServerThread],
) -> None:
    server = start_textinv(api_keys=("secret",), metrics_port=0)
    before = refused(server, "unknown", "missing_key")
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/textinv.v1.TextInv/NoSuchMethod-1234")
        with pytest.raises(grpc.RpcError):
            call(b"", timeout=10)
    assert refused(server, "unknown", "missing_key") == before + 1
    assert refused(server, "NoSuchMethod-1234", "missing_key") == 0  # no label from a caller


def test_an_overloaded_refusal_is_counted(
    start_textinv: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    batching = BatchingConfig(max_batch=1, batch_wait_ms=0, max_queue=1)
    server = start_textinv(batching=batching, metrics_port=0)
    before = refused(server, "Generate", "overloaded")
    release = threading.Event()
    pipeline, batcher = server.running.service.pipeline, server.running.service.batcher
    original = pipeline.run_batch

    def held(jobs: Any) -> Any:
        release.wait(30)
        return original(jobs)

    monkeypatch.setattr(pipeline, "run_batch", held)  # the worker holds the first batch
    request = GenerateRequest("a star", steps=1, seed=1, width=32, height=32)
    with ThreadPoolExecutor(2) as pool, TextInvClient(server.target) as textinv:
        running = pool.submit(textinv.generate, request)
        wait_until(lambda: batcher.busy)  # taken by the worker, and held
        waiting = pool.submit(textinv.generate, request)
        wait_until(lambda: batcher.depth == 1)  # the queue of 1 is full
        with pytest.raises(ResourceExhausted):
            textinv.generate(request)
        release.set()
        assert running.result(60).images and waiting.result(60).images
    assert refused(server, "Generate", "overloaded") == before + 1


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the server never got there")
        time.sleep(0.01)


# --- HTTP/2 limits of a connection ---------------------------------------------------------------


def test_the_policy_sets_every_channel_argument() -> None:
    options = dict(app.CONNECTIONS.options(max_message_bytes=5 << 20))
    assert options["grpc.max_receive_message_length"] == 5 << 20
    assert options["grpc.max_send_message_length"] == 5 << 20
    for name in (
        "grpc.max_concurrent_streams",
        "grpc.keepalive_time_ms",
        "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls",
        "grpc.http2.min_ping_interval_without_data_ms",
        "grpc.http2.max_ping_strikes",
        "grpc.max_connection_age_ms",
        "grpc.max_connection_age_grace_ms",
    ):
        assert options[name] > 0, name


@pytest.fixture
def health_watches() -> Iterator[list[Any]]:
    """Health.Watch streams opened by a test (they stay open until cancelled); all cancelled."""
    watches: list[Any] = []
    yield watches
    for watch in watches:
        watch.cancel()


def test_streams_beyond_the_limit_wait_for_a_free_one(
    start_textinv: Callable[..., ServerThread],
    monkeypatch: pytest.MonkeyPatch,
    health_watches: list[Any],
) -> None:
    with_policy(monkeypatch, max_concurrent_streams=2)
    server = start_textinv()
    with grpc.insecure_channel(server.target) as channel, ThreadPoolExecutor(1) as pool:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(2):  # two streams that stay open: the connection's limit
            watch = health.Watch(health_pb2.HealthCheckRequest())
            health_watches.append(watch)
            assert next(watch).status == SERVING
        # A third call on the same connection waits for a stream rather than failing...
        with pytest.raises(grpc.RpcError) as waited:
            health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        pending = pool.submit(health.Check, health_pb2.HealthCheckRequest(), timeout=30)
        time.sleep(0.3)
        assert not pending.done()
        # ...and goes ahead as soon as one of them closes.
        health_watches[0].cancel()
        assert pending.result(30).status == SERVING


def test_the_default_limit_lets_many_streams_share_a_connection(
    textinv_server: ServerThread, health_watches: list[Any]
) -> None:
    with grpc.insecure_channel(textinv_server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(8):
            watch = health.Watch(health_pb2.HealthCheckRequest())
            health_watches.append(watch)
            assert next(watch).status == SERVING
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING


def test_an_old_connection_is_replaced_without_failing_a_call(
    start_textinv: Callable[..., ServerThread], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_policy(monkeypatch, max_connection_age_ms=300, max_connection_age_grace_ms=300)
    server = start_textinv()
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(server.target) as channel:
        channel.subscribe(states.append, try_to_connect=False)
        stub = textinv_pb2_grpc.TextInvStub(channel)
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < 2.0:  # several ages of 300 ms (+ jitter)
            stub.GetServerInfo(server_info_pb2.GetServerInfoRequest(), timeout=10)
            calls += 1
            time.sleep(0.05)
        channel.unsubscribe(states.append)
    assert calls > 10  # every call succeeded, across the server's GOAWAYs
    ready = grpc.ChannelConnectivity.READY
    pairs = itertools.pairwise(states)
    reconnects = sum(1 for before, after in pairs if before is ready and after is not ready)
    assert reconnects >= 2, states  # the server closed the connection, and the client came back
