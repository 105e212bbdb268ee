"""The sync and async clients against a real grpc server running a small fake servicer.

The fake answers from canned data; the point is the client side: the API key travels as
``authorization: Bearer KEY``, statuses become typed exceptions, streams and pages are followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from textinv_client import (
    AsyncTextInvClient,
    ConceptInfo,
    GenerateProgress,
    GenerateRequest,
    GenerateResult,
    InvalidArgument,
    InversionParams,
    JobEvent,
    JobInfo,
    JobProgress,
    JobState,
    NotFound,
    Scheduler,
    TextInvClient,
    TrainingImage,
    cli,
    convert,
)
from textinv_client.pb.v1 import (
    concepts_pb2,
    generate_pb2,
    jobs_pb2,
    server_info_pb2,
    textinv_pb2_grpc,
)

API_KEY = "test-key-123"
PNG = b"\x89PNG\r\n\x1a\n-fake"
CONCEPTS = [ConceptInfo(f"<c{i}>", 1, 32, "diffusers", 100, "00") for i in range(5)]


def _job(state: JobState, step: int = 0) -> JobInfo:
    params = InversionParams(token="<cat-toy>", init_text="toy", steps=3, seed=7)
    token = "<cat-toy>" if state is JobState.SUCCEEDED else ""
    return JobInfo("job-1", state, params, 3, True, step, 3, registered_token=token)


@dataclass
class FakeTextInv(textinv_pb2_grpc.TextInvServicer):
    """Records what arrived and answers from canned data."""

    seen_metadata: list[dict[str, str]] = field(default_factory=list)
    seen_requests: list[Any] = field(default_factory=list)

    def _record(self, request: Any, context: grpc.ServicerContext) -> None:
        self.seen_metadata.append({key: value for key, value in context.invocation_metadata()})
        self.seen_requests.append(request)

    def Generate(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        if request.steps > 100:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"steps {request.steps} > max 100")
        return self._result(request)

    def _result(self, request: Any) -> generate_pb2.GenerateResponse:
        seed = request.seed if request.HasField("seed") else 1234
        count = request.num_images or 1
        result = GenerateResult(
            images=tuple(PNG for _ in range(count)),
            seeds=tuple(seed + index for index in range(count)),
            seed=seed,
            timings=convert.stage_timings_from_pb(generate_pb2.StageTimings(total_ms=5.0)),
            warnings=("prompt truncated to 77 tokens",),
        )
        return convert.generate_result_to_pb(result)

    def GenerateStream(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._record(request, context)
        for step in range(1, request.steps + 1):
            progress = generate_pb2.GenerateProgress(step=step, total_steps=request.steps)
            yield generate_pb2.GenerateStreamResponse(progress=progress)
        yield generate_pb2.GenerateStreamResponse(result=self._result(request))

    def RegisterConcept(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        token = request.token if request.HasField("token") else "<from-file>"
        info = ConceptInfo(token, 2, 32, "a1111", len(request.data), "ff")
        return concepts_pb2.RegisterConceptResponse(concept=convert.concept_info_to_pb(info))

    def ListConcepts(self, request: Any, context: grpc.ServicerContext) -> Any:
        # Pages of two, so the client must follow next_page_token.
        start = int(request.page_token or 0)
        page = CONCEPTS[start : start + 2]
        next_token = str(start + 2) if start + 2 < len(CONCEPTS) else ""
        return concepts_pb2.ListConceptsResponse(
            concepts=[convert.concept_info_to_pb(c) for c in page], next_page_token=next_token
        )

    def GetConcept(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        if request.token != "<c0>":
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown concept {request.token!r}")
        file = b"safetensors-bytes" if request.include_file else b""
        return concepts_pb2.GetConceptResponse(
            concept=convert.concept_info_to_pb(CONCEPTS[0]), file=file
        )

    def CreateInversionJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        return jobs_pb2.CreateInversionJobResponse(
            job=convert.job_info_to_pb(_job(JobState.QUEUED))
        )

    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._record(request, context)
        yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(_job(JobState.RUNNING)))
        for step in (1, 2, 3):
            progress = jobs_pb2.JobProgress(step=step, total_steps=3, loss=0.5 / step)
            yield jobs_pb2.WatchJobResponse(progress=progress)
        yield jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(_job(JobState.SUCCEEDED, 3)))

    def GetServerInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._record(request, context)
        return server_info_pb2.GetServerInfoResponse(backend="torch", api_version="textinv.v1")


@pytest.fixture(scope="module")
def fake_server() -> Iterator[tuple[str, FakeTextInv]]:
    servicer = FakeTextInv()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    textinv_pb2_grpc.add_TextInvServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def test_sync_client_sends_the_api_key(fake_server: tuple[str, FakeTextInv]) -> None:
    target, servicer = fake_server
    with TextInvClient(target, api_key=API_KEY, timeout=10) as textinv:
        result = textinv.generate(GenerateRequest(prompt="a <cat-toy>", seed=41, num_images=2))
    assert servicer.seen_metadata[-1]["authorization"] == f"Bearer {API_KEY}"
    assert result.images == (PNG, PNG)
    assert result.seeds == (41, 42)
    assert result.warnings == ("prompt truncated to 77 tokens",)


def test_sync_client_maps_invalid_argument(fake_server: tuple[str, FakeTextInv]) -> None:
    target, _ = fake_server
    with TextInvClient(target, timeout=10) as textinv, pytest.raises(InvalidArgument) as caught:
        textinv.generate(GenerateRequest(prompt="x", steps=500))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.message == "steps 500 > max 100"


def test_sync_client_streams_pages_and_files(fake_server: tuple[str, FakeTextInv]) -> None:
    target, servicer = fake_server
    with TextInvClient(target, timeout=10) as textinv:
        events = list(textinv.generate_stream(GenerateRequest(prompt="x", steps=3)))
        assert events[:3] == [GenerateProgress(step, 3, 0.0) for step in (1, 2, 3)]
        assert isinstance(events[-1], GenerateResult) and len(events) == 4
        assert textinv.list_concepts() == CONCEPTS
        assert textinv.download_concept("<c0>") == b"safetensors-bytes"
        with pytest.raises(NotFound, match="unknown concept"):
            textinv.get_concept("<nope>")
        concept = textinv.register_concept(b"1234", filename="x.pt", token="<renamed>")
        assert concept.token == "<renamed>" and concept.size_bytes == 4
    register = servicer.seen_requests[-1]
    assert register.filename == "x.pt" and not register.replace


def test_sync_client_creates_and_watches_a_job(fake_server: tuple[str, FakeTextInv]) -> None:
    target, servicer = fake_server
    images = [TrainingImage(b"img", "a.png", "a photo of {}")]
    params = InversionParams(token="<cat-toy>", init_text="toy", steps=3)
    with TextInvClient(target, timeout=10) as textinv:
        job = textinv.create_inversion_job(images, params, register_on_success=False)
        assert servicer.seen_requests[-1].skip_register is True
        assert job.state is JobState.QUEUED
        events = list(textinv.watch_job(job.job_id))
    assert [type(event) for event in events] == [
        JobInfo,
        JobProgress,
        JobProgress,
        JobProgress,
        JobInfo,
    ]
    final = events[-1]
    assert isinstance(final, JobInfo) and final.state is JobState.SUCCEEDED


def test_async_client_sends_the_key_and_maps_errors(fake_server: tuple[str, FakeTextInv]) -> None:
    target, servicer = fake_server

    async def scenario() -> tuple[GenerateResult, list[JobEvent]]:
        async with AsyncTextInvClient(target, api_key=API_KEY, timeout=10) as textinv:
            result = await textinv.generate(GenerateRequest(prompt="x", seed=5))
            assert servicer.seen_metadata[-1]["authorization"] == f"Bearer {API_KEY}"
            with pytest.raises(InvalidArgument, match="steps 101 > max 100"):
                await textinv.generate(GenerateRequest(prompt="x", steps=101))
            events = [event async for event in textinv.watch_job("job-1")]
            assert (await textinv.list_concepts()) == CONCEPTS
            assert (await textinv.get_server_info()).backend == "torch"
            return result, events

    result, events = asyncio.run(scenario())
    assert result.seeds == (5,)
    assert len(events) == 5


def test_cli_generate_writes_numbered_pngs(
    fake_server: tuple[str, FakeTextInv],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, servicer = fake_server
    monkeypatch.setenv(cli.API_KEY_ENV, "from-env")
    out = tmp_path / "img" / "cat.png"
    argv = ["generate", "--server", target, "--prompt", "a <cat-toy>", "--num-images", "2"]
    code = cli.main([*argv, "--seed", "9", "--scheduler", "euler", "--out", str(out)])
    assert code == 0
    assert (tmp_path / "img" / "cat-0.png").read_bytes() == PNG
    assert (tmp_path / "img" / "cat-1.png").read_bytes() == PNG
    assert "(seed 10)" in capsys.readouterr().out
    assert servicer.seen_metadata[-1]["authorization"] == "Bearer from-env"
    sent = servicer.seen_requests[-1]
    assert sent.scheduler == generate_pb2.SCHEDULER_EULER and sent.steps == 30


def test_cli_server_error_is_one_line(
    fake_server: tuple[str, FakeTextInv], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = fake_server
    out = str(tmp_path / "x.png")
    code = cli.main(
        ["generate", "--server", target, "--prompt", "x", "--steps", "200", "--out", out]
    )
    assert code == 2
    assert capsys.readouterr().err == "error: steps 200 > max 100\n"
    assert cli.main(["concepts", "get", "<nope>", "--server", target]) == 1
    assert capsys.readouterr().err == "error: not_found: unknown concept '<nope>'\n"


def test_cli_jobs_submit_and_watch(
    fake_server: tuple[str, FakeTextInv], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, servicer = fake_server
    (tmp_path / "a.png").write_bytes(b"image-a")
    (tmp_path / "a.txt").write_text("a photo of {} on a table\n")
    (tmp_path / "b.jpg").write_bytes(b"image-b")
    (tmp_path / "notes.md").write_text("not an image")
    argv = ["jobs", "submit", "--server", target, "--images", str(tmp_path)]
    code = cli.main([*argv, "--token", "<cat-toy>", "--init", "toy", "--steps", "3", "--watch"])
    assert code == 0
    created = next(
        r
        for r in reversed(servicer.seen_requests)
        if isinstance(r, jobs_pb2.CreateInversionJobRequest)
    )
    assert [image.filename for image in created.images] == ["a.png", "b.jpg"]
    assert created.images[0].caption == "a photo of {} on a table"
    assert not created.images[1].HasField("caption")
    assert created.params.steps == 3 and not created.skip_register
    out = capsys.readouterr().out
    assert "submitted job job-1" in out and "registered <cat-toy>" in out


def test_cli_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on localhost refuses connections at once.
    code = cli.main(["concepts", "ls", "--server", "127.0.0.1:1", "--timeout", "5"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unavailable: ") and err.count("\n") == 1


def test_scheduler_choice_round_trips_through_the_cli() -> None:
    parser = cli.build_parser()
    for scheduler in Scheduler:
        words = ["generate", "--server", "h:1", "--prompt", "p", "--out", "o.png"]
        args = parser.parse_args([*words, "--scheduler", scheduler.value])
        assert cli.generate_request_from_args(args).scheduler is scheduler
