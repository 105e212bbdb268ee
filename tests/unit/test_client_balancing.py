"""Clients over several replicas: targets, round_robin, retries on UNAVAILABLE, request ids.

Real grpc servers on real ports run the fake servicer of ``test_client_fake_server``; a flaky
variant answers UNAVAILABLE to its first calls, as a replica that drains or restarts does. The
servicer records every call that reached it, so a count of 2 is a retry by the client's policy
(gRPC's transparent retries never resend a call that the server's code answered).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.unit.test_client_fake_server import FakeTextInv
from textinv_client import (
    AsyncTextInvClient,
    InversionParams,
    JobInfo,
    JobState,
    TextInvClient,
    TrainingImage,
    Unavailable,
    cli,
    convert,
)
from textinv_client.channel import RETRIED_METHODS, ConnectionSettings, grpc_target
from textinv_client.connection_flags import client_from_args
from textinv_client.pb.v1 import jobs_pb2, textinv_pb2, textinv_pb2_grpc

# Port 1 on localhost refuses connections at once: a replica that is down.
DEAD = "127.0.0.1:1"
IMAGES = [TrainingImage(b"img", "a.png", "a photo of {}")]
PARAMS = InversionParams(token="<cat-toy>", init_text="toy", steps=3)


@dataclass
class FlakyTextInv(FakeTextInv):
    """The fake, whose first ``failures`` calls (of any method) answer UNAVAILABLE."""

    failures: int = 0

    def _fail_first(self, request: Any, context: grpc.ServicerContext) -> None:
        # A failed call is recorded here, a successful one where it is answered.
        if self.failures > 0:
            self.failures -= 1
            self._record(request, context)
            context.abort(grpc.StatusCode.UNAVAILABLE, "replica draining")

    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._fail_first(request, context)
        self._record(request, context)
        job = JobInfo(request.job_id, JobState.QUEUED, PARAMS, 1, True, 0, 3)
        return jobs_pb2.GetJobResponse(job=convert.job_info_to_pb(job))

    def RegisterConcept(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._fail_first(request, context)
        return super().RegisterConcept(request, context)

    def CreateInversionJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._fail_first(request, context)
        return super().CreateInversionJob(request, context)


@contextmanager
def serving(servicer: textinv_pb2_grpc.TextInvServicer) -> Iterator[str]:
    """A real grpc server on a free local port running ``servicer``; yields its HOST:PORT."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    textinv_pb2_grpc.add_TextInvServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _created(servicer: FakeTextInv) -> list[str]:
    """The request ids of the creates the servicer saw, in order."""
    return [
        request.request_id
        for request in servicer.seen_requests
        if isinstance(request, jobs_pb2.CreateInversionJobRequest)
    ]


# -- targets ------------------------------------------------------------------------------------


def test_targets_become_grpc_targets() -> None:
    # One address and gRPC's own targets are used as given, as before.
    for target in ("localhost:50051", "dns:///textinv:50051", "ipv4:10.0.0.1:1,10.0.0.2:1"):
        assert grpc_target(target) == target
    assert grpc_target("10.0.0.1:50051, 10.0.0.2:50051") == "ipv4:10.0.0.1:50051,10.0.0.2:50051"
    assert grpc_target("[::1]:1,[2001:db8::2]:2") == "ipv6:[::1]:1,[2001:db8::2]:2"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("alpha:50051,beta:50051", "lists the host name 'alpha'.*one DNS name"),
        ("10.0.0.1:50051,,10.0.0.2:50051", "has an empty entry"),
        ("10.0.0.1:50051,", "has an empty entry"),
        ("10.0.0.1,10.0.0.2:50051", "'10.0.0.1' in target .* is not HOST:PORT"),
        ("10.0.0.1:99999,10.0.0.2:1", "is not HOST:PORT"),
        ("10.0.0.1:1,[::1]:1", "mixes IPv4 and IPv6"),
        ("::1:1,::2:1", r"write IPv6 addresses as \[ADDR\]:PORT"),
    ],
)
def test_bad_targets_are_refused_by_name(target: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        ConnectionSettings(target)
    assert repr(target) in str(caught.value)


def test_clients_take_a_sequence_of_addresses() -> None:
    with pytest.raises(ValueError, match="host name 'a'"):
        TextInvClient(["a:1", "b:1"])
    with pytest.raises(ValueError, match="must not hold commas"):
        TextInvClient(["10.0.0.1:1,10.0.0.2:1", "10.0.0.3:1"])
    with pytest.raises(ValueError, match="over TLS, set tls_server_name"):
        TextInvClient(["10.0.0.1:1", "10.0.0.2:1"], tls=True)
    with TextInvClient(["10.0.0.1:1", "10.0.0.2:1"], tls=True, tls_server_name="textinv") as one:
        assert one.settings.grpc_target == "ipv4:10.0.0.1:1,10.0.0.2:1"


def test_service_config_retries_only_the_idempotent_methods() -> None:
    service = textinv_pb2.DESCRIPTOR.services_by_name["TextInv"]
    options = dict(ConnectionSettings("h:1").channel_options())
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    names = {(name["service"], name["method"]) for name in method_config["name"]}
    assert names == {(service.full_name, method) for method in RETRIED_METHODS}
    assert set(RETRIED_METHODS) == {m.name for m in service.methods} - {
        "RegisterConcept",
        "DeleteConcept",
    }
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    off = json.loads(ConnectionSettings("h:1", retries=False).service_config())
    assert "methodConfig" not in off
    # An option the caller gives replaces ours instead of joining it.
    mine = ConnectionSettings("h:1").channel_options([("grpc.service_config", "{}")])
    assert [value for name, value in mine if name == "grpc.service_config"] == ["{}"]


# -- balancing ----------------------------------------------------------------------------------


def test_calls_spread_over_two_replicas() -> None:
    first, second = FakeTextInv(), FakeTextInv()
    with serving(first) as one, serving(second) as two:
        with TextInvClient(f"{one},{two}", timeout=10) as textinv:
            for _ in range(20):
                textinv.get_server_info()
        assert first.seen_requests and second.seen_requests
        assert len(first.seen_requests) + len(second.seen_requests) == 20
        # pick_first, by contrast, keeps to one replica.
        before = len(first.seen_requests), len(second.seen_requests)
        with TextInvClient([one, two], timeout=10, load_balancing="pick_first") as textinv:
            for _ in range(10):
                textinv.get_server_info()
        after = len(first.seen_requests), len(second.seen_requests)
        assert sorted(now - then for now, then in zip(after, before, strict=True)) == [0, 10]


def test_a_dead_replica_is_skipped() -> None:
    # Retries off: every call succeeds because round_robin picks only the live replica.
    servicer = FakeTextInv()
    with serving(servicer) as live, TextInvClient([live, DEAD], retries=False, timeout=10) as c:
        for _ in range(20):
            assert c.get_server_info().backend == "torch"
    assert len(servicer.seen_requests) == 20


def test_a_dns_target_reaches_the_server() -> None:
    servicer = FakeTextInv()
    with serving(servicer) as target:
        port = target.rsplit(":", 1)[1]
        with TextInvClient(f"dns:///localhost:{port}", timeout=10) as textinv:
            assert textinv.get_server_info().backend == "torch"


# -- retries ------------------------------------------------------------------------------------


def test_get_job_is_retried_after_unavailable() -> None:
    servicer = FlakyTextInv(failures=1)
    with serving(servicer) as target, TextInvClient(target, timeout=10) as textinv:
        assert textinv.get_job("job-7").job_id == "job-7"
        assert len(servicer.seen_requests) == 2
        # RegisterConcept is not idempotent: its UNAVAILABLE reaches the caller.
        servicer.failures = 1
        with pytest.raises(Unavailable, match="replica draining"):
            textinv.register_concept(b"1234", token="<x>")
        assert len(servicer.seen_requests) == 3


def test_without_the_policy_unavailable_reaches_the_caller() -> None:
    # The same first failure, retries off: the 2 calls above were the policy's doing.
    servicer = FlakyTextInv(failures=1)
    with (
        serving(servicer) as target,
        TextInvClient(target, retries=False, timeout=10) as textinv,
        pytest.raises(Unavailable, match="replica draining"),
    ):
        textinv.get_job("job-7")
    assert len(servicer.seen_requests) == 1


def test_async_client_retries_too() -> None:
    servicer = FlakyTextInv(failures=1)

    async def scenario(target: str) -> JobInfo:
        async with AsyncTextInvClient(target, timeout=10) as textinv:
            return await textinv.get_job("job-8")

    with serving(servicer) as target:
        assert asyncio.run(scenario(target)).job_id == "job-8"
    assert len(servicer.seen_requests) == 2


def test_a_retried_create_repeats_its_request_id() -> None:
    servicer = FlakyTextInv(failures=1)
    with serving(servicer) as target, TextInvClient(target, timeout=10) as textinv:
        textinv.create_inversion_job(IMAGES, PARAMS)
        first, again = _created(servicer)
        assert first == again and len(first) == 32
        textinv.create_inversion_job(IMAGES, PARAMS)
        assert _created(servicer)[2] != first  # a new create, a new key
        servicer.failures = 1
        textinv.create_inversion_job(IMAGES, PARAMS, request_id="order-42 / try 1")
        assert _created(servicer)[3:] == ["order-42 / try 1", "order-42 / try 1"]


@pytest.mark.parametrize("bad", ["", "x" * 65, "caf\u00e9", "two\nlines"])
def test_a_bad_request_id_is_refused_before_sending(bad: str) -> None:
    servicer = FakeTextInv()
    with (
        serving(servicer) as target,
        TextInvClient(target, timeout=10) as textinv,
        pytest.raises(ValueError, match="request_id must be 1 to 64 printable ASCII"),
    ):
        textinv.create_inversion_job(IMAGES, PARAMS, request_id=bad)
    assert not servicer.seen_requests


# -- command line -------------------------------------------------------------------------------


def test_cli_sends_the_request_id_and_turns_retries_off(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"image-a")
    servicer = FakeTextInv()
    with serving(servicer) as target:
        argv = ["jobs", "submit", "--server", target, "--images", str(tmp_path)]
        code = cli.main([*argv, "--token", "<t>", "--init", "toy", "--request-id", "nightly-7"])
    assert code == 0
    assert _created(servicer) == ["nightly-7"]
    args = cli.build_parser().parse_args(["jobs", "ls", "--server", "h:1", "--no-retries"])
    with client_from_args(args) as textinv:
        assert textinv.settings.retries is False
