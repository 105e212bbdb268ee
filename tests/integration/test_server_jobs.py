"""Inversion jobs, metrics and reflection on a real server: the happy paths end to end."""

from __future__ import annotations

import dataclasses
import io
import urllib.request
from collections.abc import Callable

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from tests.integration.conftest import ServerThread
from tests.integration.test_server_rpcs import concept_file
from textinv.concepts import parse_concept
from textinv_client import (
    InvalidArgument,
    InversionParams,
    JobInfo,
    JobProgress,
    JobState,
    NotFound,
    TextInvClient,
    TrainingImage,
)
from textinv_client.pb.v1 import jobs_pb2, textinv_pb2_grpc
from textinv_server.config import Limits


def training_images(count: int = 2, height: int = 64) -> list[TrainingImage]:
    images = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 255, (height, 64, 3), dtype=np.uint8)
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


def refusal(textinv: TextInvClient, images: list[TrainingImage], job: InversionParams) -> str:
    with pytest.raises(InvalidArgument) as caught:
        textinv.create_inversion_job(images, job)
    return str(caught.value)


def test_job_parameters_are_refused_with_the_servers_own_bounds(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        limits = textinv.get_server_info().limits
        job = params("<too-big>")
        # The server's limits, not the trainer's wider ones (1..1000000 steps, 8..2048 px).
        steps = refusal(textinv, training_images(), dataclasses.replace(job, steps=10**9))
        assert f"params.steps must be 1..{limits.max_job_steps}, got 1000000000" in steps
        side = refusal(textinv, training_images(), dataclasses.replace(job, resolution=2048))
        assert (
            f"params.resolution must be a multiple of 8 in 8..{limits.max_training_resolution}"
            in side
        )
        # One micro-step of 64 images of 1024² would take minutes and gigabytes on the job thread.
        huge = dataclasses.replace(job, resolution=1024, batch_size=64)
        budget = refusal(textinv, training_images(), huge)
        assert "params.batch_size" in budget and "params.resolution" in budget
        assert f"at most {limits.max_training_pixels_per_step} pixels" in budget
        assert limits.max_training_pixels_per_step == 4 * 512 * 512
        assert textinv.list_jobs() == []  # nothing was stored


def test_the_training_pixel_limits_are_the_servers_and_reported(
    start_textinv: Callable[..., ServerThread],
) -> None:
    limits = Limits(
        max_concurrent_jobs=1,
        max_training_image_pixels=64 * 64,
        max_training_pixels_per_step=2 * 64 * 64,
    )
    server = start_textinv(limits=limits)
    with TextInvClient(server.target) as textinv:
        reported = textinv.get_server_info().limits
        assert reported.max_training_image_pixels == 64 * 64
        assert reported.max_training_pixels_per_step == 2 * 64 * 64
        job = dataclasses.replace(params("<small>", steps=2), resolution=64)
        tall = refusal(textinv, training_images(height=72), job)
        assert "'0.png'" in tall and "64×72" in tall and "4096 pixels" in tall
        three = refusal(textinv, training_images(), dataclasses.replace(job, batch_size=3))
        assert "got 3 × 64² = 12288" in three
        assert textinv.list_jobs() == []
        # Within both limits: accepted, and it trains.
        accepted = textinv.create_inversion_job(
            training_images(), dataclasses.replace(job, batch_size=2)
        )
        final = list(textinv.watch_job(accepted.job_id))[-1]
        assert isinstance(final, JobInfo) and final.state is JobState.SUCCEEDED


def test_a_token_is_taken_in_every_case_by_concepts_and_by_jobs(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        # A vocabulary word, in another case, would take the word from every prompt.
        with pytest.raises(InvalidArgument, match="vocabulary"):
            textinv.create_inversion_job(training_images(), params("Photo"))
        # A job's token is its own while the job is queued or running, in any case or form.
        first = textinv.create_inversion_job(training_images(), params("<clash>", steps=5000))
        try:
            with pytest.raises(InvalidArgument, match="another job"):
                textinv.create_inversion_job(training_images(), params("<CLASH>"))
        finally:
            textinv.cancel_job(first.job_id)


def test_a_job_whose_token_was_taken_meanwhile_fails_and_keeps_its_concept(textinv_server) -> None:
    with TextInvClient(textinv_server.target) as textinv:
        job = textinv.create_inversion_job(training_images(), params("<late>", steps=40))
        # Someone registers the same token while the job trains.
        textinv.register_concept(concept_file("<late>", seed=5), filename="late.safetensors")
        final = list(textinv.watch_job(job.job_id))[-1]
        assert isinstance(final, JobInfo) and final.state is JobState.FAILED
        assert "<late>" in final.error
        # The registered concept is untouched; the learned one is kept with the job.
        assert textinv.get_concept("<late>").job_id == ""
        kept = textinv.download_job_concept(job.job_id)
        assert parse_concept(kept, "job.safetensors").token == "<late>"
