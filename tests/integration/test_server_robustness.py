"""Bad input, auth, TLS, load, deadlines and restarts against a real server on a free port."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import ServerThread
from tests.pki import write_test_pki
from textinv.concepts import Concept, concept_to_bytes
from textinv_client import (
    DeadlineExceeded,
    GenerateRequest,
    TextInvClient,
    TextInvError,
    Unauthenticated,
)
from textinv_client.pb.v1 import (
    concepts_pb2,
    generate_pb2,
    jobs_pb2,
    textinv_pb2_grpc,
)

WIDTH = 32
Code = grpc.StatusCode


def concept_file(token: str = "<cat-toy>", width: int = WIDTH, seed: int = 0) -> bytes:
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
    return concept_to_bytes(Concept(token, vectors))


def small(**fields: Any) -> generate_pb2.GenerateRequest:
    values: dict[str, Any] = {
        "prompt": "a red star",
        "steps": 2,
        "seed": 1,
        "width": 32,
        "height": 32,
    }
    values |= fields
    return generate_pb2.GenerateRequest(**values)


def job(images: int = 1, **params: Any) -> jobs_pb2.CreateInversionJobRequest:
    values: dict[str, Any] = {"token": "<new-thing>", "init_text": "toy", "steps": 2}
    values |= params
    return jobs_pb2.CreateInversionJobRequest(
        images=[jobs_pb2.TrainingImage(data=b"not an image", filename="a.png")] * images,
        params=jobs_pb2.InversionParams(**values),
    )


# (rpc name, request, expected status, a word the message must contain)
BAD_REQUESTS: list[tuple[str, Any, grpc.StatusCode, str]] = [
    ("Generate", small(prompt="   "), Code.INVALID_ARGUMENT, "prompt"),
    ("Generate", small(width=30), Code.INVALID_ARGUMENT, "30"),
    ("Generate", small(steps=10_000), Code.INVALID_ARGUMENT, "10000"),
    ("Generate", small(guidance_scale=float("nan")), Code.INVALID_ARGUMENT, "guidance"),
    ("Generate", small(num_images=1000), Code.INVALID_ARGUMENT, "1000"),
    ("Generate", small(scheduler=99), Code.INVALID_ARGUMENT, "99"),
    ("Generate", small(width=4096, height=4096), Code.INVALID_ARGUMENT, "pixels"),
    ("Generate", small(prompt="a <nobody> here"), Code.NOT_FOUND, "<nobody>"),
    ("Generate", small(prompt="x" * 5000), Code.INVALID_ARGUMENT, "5000"),
    ("GenerateStream", small(width=12), Code.INVALID_ARGUMENT, "12"),
    (
        "RegisterConcept",
        concepts_pb2.RegisterConceptRequest(data=b"garbage", filename="g.pt"),
        Code.INVALID_ARGUMENT,
        "g.pt",
    ),
    (
        "RegisterConcept",
        concepts_pb2.RegisterConceptRequest(data=concept_file(width=64), filename="w.safetensors"),
        Code.INVALID_ARGUMENT,
        "width 64",
    ),
    (
        "RegisterConcept",
        concepts_pb2.RegisterConceptRequest(data=concept_file(), token="cat"),
        Code.INVALID_ARGUMENT,
        "collides",
    ),
    ("GetConcept", concepts_pb2.GetConceptRequest(token="<nobody>"), Code.NOT_FOUND, "<nobody>"),
    ("DeleteConcept", concepts_pb2.DeleteConceptRequest(token="<x>"), Code.NOT_FOUND, "<x>"),
    (
        "ListConcepts",
        concepts_pb2.ListConceptsRequest(page_token="%%%"),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    ("GetJob", jobs_pb2.GetJobRequest(job_id="nope"), Code.NOT_FOUND, "nope"),
    ("CancelJob", jobs_pb2.CancelJobRequest(job_id="nope"), Code.NOT_FOUND, "nope"),
    ("CreateInversionJob", job(images=0), Code.INVALID_ARGUMENT, "images"),
    ("CreateInversionJob", job(token=""), Code.INVALID_ARGUMENT, "token"),
    ("CreateInversionJob", job(token="cat"), Code.INVALID_ARGUMENT, "collides"),
    ("CreateInversionJob", job(init_text=" "), Code.INVALID_ARGUMENT, "init_text"),
    ("CreateInversionJob", job(images=50), Code.INVALID_ARGUMENT, "50"),
    ("CreateInversionJob", job(), Code.INVALID_ARGUMENT, "a.png"),
    # Every trainer parameter is checked at creation, named as the request names it.
    ("CreateInversionJob", job(num_vectors=100), Code.INVALID_ARGUMENT, "params.num_vectors"),
    ("CreateInversionJob", job(resolution=2**30), Code.INVALID_ARGUMENT, "params.resolution"),
    ("CreateInversionJob", job(resolution=100), Code.INVALID_ARGUMENT, "params.resolution"),
    ("CreateInversionJob", job(batch_size=10**6), Code.INVALID_ARGUMENT, "params.batch_size"),
    ("CreateInversionJob", job(steps=10**6), Code.INVALID_ARGUMENT, "params.steps"),
    (
        "CreateInversionJob",
        job(learning_rate=float("inf")),
        Code.INVALID_ARGUMENT,
        "params.learning_rate",
    ),
    ("CreateInversionJob", job(seed=2**64 - 1), Code.INVALID_ARGUMENT, "params.seed"),
    ("CreateInversionJob", job(init_text="y" * 10**5), Code.INVALID_ARGUMENT, "init_text"),
    ("CreateInversionJob", job(token="<" + "t" * 500 + ">"), Code.INVALID_ARGUMENT, "token"),
    (
        "RegisterConcept",
        concepts_pb2.RegisterConceptRequest(data=concept_file(), filename="f" * 10_000),
        Code.INVALID_ARGUMENT,
        "filename",
    ),
    ("GetJob", jobs_pb2.GetJobRequest(job_id="j" * 10_000), Code.INVALID_ARGUMENT, "job_id"),
    (
        "ListJobs",
        jobs_pb2.ListJobsRequest(page_token=base64.urlsafe_b64encode("²".encode()).decode()),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    (
        "ListJobs",
        jobs_pb2.ListJobsRequest(page_token=base64.urlsafe_b64encode(b"9" * 100).decode()),
        Code.INVALID_ARGUMENT,
        "page_token",
    ),
    ("ListJobs", jobs_pb2.ListJobsRequest(page_token="p" * 5000), Code.INVALID_ARGUMENT, "page"),
    ("ListJobs", jobs_pb2.ListJobsRequest(states=cast(Any, [77])), Code.INVALID_ARGUMENT, "77"),
]

# No error message quotes more than a short prefix of a bad value.
MAX_DETAILS_CHARS = 400


def call(stub: textinv_pb2_grpc.TextInvStub, rpc: str, request: Any) -> Any:
    method = getattr(stub, rpc)
    if rpc in ("GenerateStream", "WatchJob"):
        return list(method(request, timeout=60))
    return method(request, timeout=60)


def test_bad_inputs_get_their_status_codes_and_keep_state(textinv_server: ServerThread) -> None:
    with grpc.insecure_channel(textinv_server.target) as channel:
        stub = textinv_pb2_grpc.TextInvStub(channel)
        stub.RegisterConcept(
            concepts_pb2.RegisterConceptRequest(data=concept_file("<kept>"), filename="k.st")
        )
        for rpc, request, code, word in BAD_REQUESTS:
            with pytest.raises(grpc.RpcError) as raised:
                call(stub, rpc, request)
            error = raised.value
            assert (rpc, error.code()) == (rpc, code), error.details()
            assert word in error.details(), (rpc, error.details())
            assert "Traceback" not in error.details()
            assert len(error.details()) <= MAX_DETAILS_CHARS, (rpc, len(error.details()))
            assert str(textinv_server.config.data_dir) not in error.details()  # no server paths
        duplicate = concepts_pb2.RegisterConceptRequest(data=concept_file("<kept>"), filename="k")
        with pytest.raises(grpc.RpcError) as raised:
            stub.RegisterConcept(duplicate)
        assert raised.value.code() is Code.ALREADY_EXISTS
        listed = stub.ListConcepts(concepts_pb2.ListConceptsRequest())
        assert [c.token for c in listed.concepts] == ["<kept>"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    prompt=st.text(max_size=80),
    steps=st.sampled_from([0, 1, 2, 151, 2**31]),
    size=st.sampled_from([0, 1, 8, 16, 31, 32, 4096, 2**31]),
    guidance=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32)),
    num_images=st.sampled_from([0, 1, 2, 17, 2**31]),
    scheduler=st.integers(0, 7),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_fuzzed_generate_requests_never_fail_internally(
    textinv_server: ServerThread,
    prompt: str,
    steps: int,
    size: int,
    guidance: float | None,
    num_images: int,
    scheduler: int,
    seed: int | None,
) -> None:
    request = generate_pb2.GenerateRequest(
        prompt=prompt,
        steps=steps,
        width=size,
        height=size,
        num_images=num_images,
        scheduler=scheduler,  # type: ignore[arg-type]
    )
    if guidance is not None:
        request.guidance_scale = guidance
    if seed is not None:
        request.seed = seed
    with grpc.insecure_channel(textinv_server.target) as channel:
        try:
            textinv_pb2_grpc.TextInvStub(channel).Generate(request, timeout=60)
        except grpc.RpcError as error:
            assert error.code() in (Code.INVALID_ARGUMENT, Code.NOT_FOUND), error.details()


def test_api_keys(start_textinv: Callable[..., ServerThread]) -> None:
    server = start_textinv(api_keys=("secret-1", "secret-2"))
    with TextInvClient(server.target) as anonymous, pytest.raises(Unauthenticated, match="key"):
        anonymous.list_concepts()
    with TextInvClient(server.target, api_key="wrong") as wrong, pytest.raises(Unauthenticated):
        wrong.get_server_info()
    with TextInvClient(server.target, api_key="secret-2") as allowed:
        assert allowed.list_concepts() == []
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:  # health needs no key
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_mutual_tls(start_textinv: Callable[..., ServerThread], tmp_path: Path) -> None:
    from textinv_server.config import TlsConfig

    pki = write_test_pki(tmp_path / "pki")
    tls = TlsConfig(pki["server.pem"], pki["server.key"], pki["ca.pem"])
    server = start_textinv(tls=tls)
    target = f"localhost:{server.running.port}"
    with TextInvClient(
        target,
        tls=True,
        root_certificates=pki["ca.pem"],
        client_certificate=pki["client.pem"],
        client_key=pki["client.key"],
    ) as textinv:
        assert textinv.get_server_info().backend == "torch"
    without_certificate = TextInvClient(
        target, tls=True, root_certificates=pki["ca.pem"], timeout=5
    )
    # The handshake fails; grpc reports it as UNAVAILABLE on most platforms.
    with without_certificate, pytest.raises(TextInvError):
        without_certificate.get_server_info()


def test_sixteen_concurrent_clients_all_succeed_in_batches(textinv_server: ServerThread) -> None:
    def one(seed: int) -> tuple[int, int]:
        with TextInvClient(textinv_server.target) as textinv:
            result = textinv.generate(
                GenerateRequest("a red star", steps=2, seed=seed, width=32, height=32)
            )
        return result.seeds[0], result.timings.batch_size

    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(one, range(16)))
    assert [seed for seed, _ in outcomes] == list(range(16))
    assert max(size for _, size in outcomes) > 1  # some requests shared a batch


def test_expired_deadline_stops_the_generation_within_a_step(
    textinv_server: ServerThread,
) -> None:
    backend = textinv_server.running.service.pipeline.backend
    calls = {"unet": 0}
    original = backend.predict_noise

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["unet"] += 1
        return original(*args, **kwargs)

    backend.predict_noise = counting  # type: ignore[method-assign]
    long_request = GenerateRequest("a red star", steps=150, seed=1, width=64, height=64)
    with TextInvClient(textinv_server.target) as textinv:
        with pytest.raises(DeadlineExceeded):
            textinv.generate(long_request, timeout=0.5)
        # The next request runs once the cancelled one has left the model: far fewer than the
        # 150 UNet calls the expired request would have made.
        after = textinv.generate(GenerateRequest("a star", steps=1, seed=2, width=32, height=32))
    assert after.images
    assert calls["unet"] < 150


def test_restart_keeps_registered_concepts(start_textinv: Callable[..., ServerThread]) -> None:
    first = start_textinv()
    with TextInvClient(first.target) as textinv:
        textinv.register_concept(concept_file("<kept>"), filename="kept.safetensors")
        before = textinv.generate(GenerateRequest("a <kept>", steps=2, seed=3, width=32, height=32))
    first.stop()
    second = start_textinv()
    with TextInvClient(second.target) as textinv:
        assert [c.token for c in textinv.list_concepts()] == ["<kept>"]
        after = textinv.generate(GenerateRequest("a <kept>", steps=2, seed=3, width=32, height=32))
    assert before.images == after.images


def test_queue_limit_refuses_at_once(start_textinv: Callable[..., ServerThread]) -> None:
    from textinv_server.config import BatchingConfig

    server = start_textinv(batching=BatchingConfig(max_batch=1, batch_wait_ms=0, max_queue=1))
    release = threading.Event()
    pipeline = server.running.service.pipeline
    original = pipeline.run_batch

    def held(jobs: Any) -> Any:
        release.wait(30)
        return original(jobs)

    pipeline.run_batch = held  # type: ignore[method-assign]
    request = GenerateRequest("a star", steps=1, seed=1, width=32, height=32)
    from textinv_client import ResourceExhausted

    batcher = server.running.service.batcher

    def wait_until(condition: Callable[[], bool]) -> None:
        for _ in range(500):
            if condition():
                return
            threading.Event().wait(0.01)
        raise TimeoutError("the server never got there")

    with ThreadPoolExecutor(2) as pool, TextInvClient(server.target) as textinv:
        running = pool.submit(textinv.generate, request)
        wait_until(lambda: batcher.busy)  # taken by the worker, and held
        waiting = pool.submit(textinv.generate, request)
        wait_until(lambda: batcher.depth == 1)  # the queue of 1 is full
        with pytest.raises(ResourceExhausted, match="queue is full"):
            textinv.generate(request)
        release.set()
        assert running.result(60).images and waiting.result(60).images
