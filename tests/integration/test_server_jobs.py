"""Inversion jobs, metrics and reflection on a real server: the happy paths end to end."""

from __future__ import annotations

import io
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from tests.integration.conftest import ServerThread
from textinv.concepts import parse_concept
from textinv_client import (
    InversionParams,
    JobInfo,
    JobProgress,
    JobState,
    NotFound,
    TextInvClient,
    TrainingImage,
)
from textinv_client.pb.v1 import jobs_pb2, textinv_pb2_grpc


def training_images(count: int = 2) -> list[TrainingImage]:
    images = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(TrainingImage(data=buffer.getvalue(), filename=f"{index}.png"))
    return images


def params(token: str, steps: int = 4) -> InversionParams:
    return InversionParams(token=token, init_text="toy", steps=steps, seed=1, checkpoint_every=2)


def test_a_job_is_watched_to_success_and_registers_its_concept(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        job = textinv.create_inversion_job(training_images(), params("<job-toy>"))
        assert job.state is JobState.QUEUED and job.total_steps == 4
        events = list(textinv.watch_job(job.job_id))
        final = events[-1]
        assert isinstance(final, JobInfo) and final.state is JobState.SUCCEEDED
        progress = [e for e in events if isinstance(e, JobProgress)]
        assert progress and progress[-1].step == 4 and progress[-1].total_steps == 4
        assert final.registered_token == "<job-toy>"
        assert [c.token for c in textinv.list_concepts()] == ["<job-toy>"]
        learned = parse_concept(textinv.download_job_concept(job.job_id), "job file")
        assert learned.token == "<job-toy>" and learned.metadata.steps == 4
        assert [j.job_id for j in textinv.list_jobs(states=[JobState.SUCCEEDED])] == [job.job_id]
        assert textinv.list_jobs(states=[JobState.FAILED]) == []


def test_skip_register_keeps_the_registry_unchanged(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        job = textinv.create_inversion_job(
            training_images(), params("<unregistered>"), register_on_success=False
        )
        final = list(textinv.watch_job(job.job_id))[-1]
        assert isinstance(final, JobInfo) and final.state is JobState.SUCCEEDED
        assert final.registered_token == "" and textinv.list_concepts() == []


def test_cancel_stops_a_running_job(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        job = textinv.create_inversion_job(training_images(), params("<cancelled>", steps=5000))
        for event in textinv.watch_job(job.job_id):
            if isinstance(event, JobProgress):
                textinv.cancel_job(job.job_id)  # cancel once it trains
            if isinstance(event, JobInfo) and event.state.is_terminal:
                break
        assert textinv.get_job(job.job_id).state is JobState.CANCELLED
        assert textinv.list_concepts() == []
        with pytest.raises(NotFound):
            textinv.watch_job("no-such-job").__next__()


def test_states_unspecified_lists_nothing_and_an_unfinished_job_has_no_file(
    textinv_server,
) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        job = textinv.create_inversion_job(training_images(), params("<unfinished>", steps=5000))
    with grpc.insecure_channel(textinv_server.target) as channel:
        stub = textinv_pb2_grpc.TextInvStub(channel)
        # JOB_STATE_UNSPECIFIED matches no job (jobs.proto); no states at all matches every job.
        unspecified = stub.ListJobs(
            jobs_pb2.ListJobsRequest(states=[jobs_pb2.JOB_STATE_UNSPECIFIED])
        )
        assert list(unspecified.jobs) == [] and unspecified.next_page_token == ""
        assert job.job_id in [j.job_id for j in stub.ListJobs(jobs_pb2.ListJobsRequest()).jobs]
        # include_file on an unfinished job: its state, and an empty file (not an error).
        reply = stub.GetJob(jobs_pb2.GetJobRequest(job_id=job.job_id, include_file=True))
        assert reply.job.job_id == job.job_id and reply.file == b""
        stub.CancelJob(jobs_pb2.CancelJobRequest(job_id=job.job_id))


def test_metrics_endpoint_counts_requests(start_textinv: Callable[..., ServerThread]) -> None:
    server = start_textinv(metrics_port=0)
    with TextInvClient(server.target) as textinv:
        textinv.get_server_info()
    port = server.running.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'textinv_request_seconds_count{code="OK",method="GetServerInfo"}' in text
    assert "textinv_queue_depth" in text and "textinv_jobs" in text


def test_reflection_lists_the_services(textinv_server) -> None:
    with grpc.insecure_channel(textinv_server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (reply,) = list(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in reply.list_services_response.service}
    assert {"textinv.v1.TextInv", "grpc.health.v1.Health"} <= names
