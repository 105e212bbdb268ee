"""Dataclass <-> protobuf conversion: round trips, defaults, and refusals."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from textinv_client import convert
from textinv_client.pb.v1 import generate_pb2, jobs_pb2
from textinv_client.types import (
    ConceptInfo,
    ConceptProperty,
    EngineProfile,
    GenerateProgress,
    GenerateRequest,
    GenerateResult,
    InversionParams,
    JobInfo,
    JobProgress,
    JobState,
    Limits,
    LrSchedule,
    ModelInfo,
    Precision,
    Scheduler,
    ServerInfo,
    StageTimings,
    TensorProfile,
    TrainingImage,
)

WHEN = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


def full_params() -> InversionParams:
    return InversionParams(
        token="<cat-toy>",
        init_text="toy",
        num_vectors=4,
        property=ConceptProperty.STYLE,
        steps=500,
        batch_size=2,
        grad_accum=3,
        learning_rate=5e-3,
        scale_lr=True,
        lr_schedule=LrSchedule.COSINE,
        warmup_steps=10,
        resolution=256,
        precision=Precision.BF16,
        seed=2**63 - 1,  # an inversion seed leaves the trainer one bit of headroom
        checkpoint_every=50,
    )


@pytest.mark.parametrize("scheduler", [*Scheduler, None])
def test_generate_request_round_trip(scheduler: Scheduler | None) -> None:
    request = GenerateRequest(
        prompt="a photo of <cat-toy>",
        negative_prompt="blurry",
        steps=25,
        guidance_scale=1.0,
        seed=0,
        width=512,
        height=384,
        num_images=3,
        scheduler=scheduler,
    )
    assert convert.generate_request_from_pb(convert.generate_request_to_pb(request)) == request


def test_generate_request_defaults_stay_unset_on_the_wire() -> None:
    message = convert.generate_request_to_pb(GenerateRequest(prompt="x"))
    assert not message.HasField("seed") and not message.HasField("guidance_scale")
    assert message.steps == 0 and message.width == 0
    assert message.scheduler == generate_pb2.SCHEDULER_UNSPECIFIED
    # Seed 0 is a real seed, distinct from "unset".
    assert convert.generate_request_to_pb(GenerateRequest(prompt="x", seed=0)).HasField("seed")


def test_generate_result_round_trip() -> None:
    result = GenerateResult(
        images=(b"\x89PNG-a", b"\x89PNG-b"),
        seeds=(41, 42),
        seed=41,
        timings=StageTimings(1.0, 2.0, 30.0, 1.5, 4.0, 40.0, batch_size=2),
        warnings=("prompt truncated to 77 tokens",),
    )
    message = convert.generate_result_to_pb(result, sizes=[(64, 64), (64, 64)])
    assert message.images[1].width == 64
    assert convert.generate_result_from_pb(message) == result


def test_generate_events_from_stream_messages() -> None:
    progress = GenerateProgress(step=3, total_steps=30, step_ms=12.5)
    message = generate_pb2.GenerateStreamResponse(
        progress=convert.generate_progress_to_pb(progress)
    )
    assert convert.generate_event_from_pb(message) == progress
    with pytest.raises(ValueError, match="no known event"):
        convert.generate_event_from_pb(generate_pb2.GenerateStreamResponse())


def test_concept_info_round_trip() -> None:
    concept = ConceptInfo(
        token="<cat-toy>",
        num_vectors=2,
        embedding_dim=768,
        source_format="a1111",
        size_bytes=6272,
        sha256="ab" * 32,
        created_at=WHEN,
        job_id="job-1",
    )
    assert convert.concept_info_from_pb(convert.concept_info_to_pb(concept)) == concept


def test_concept_info_without_timestamp() -> None:
    concept = ConceptInfo("<x>", 1, 32, "diffusers", 10, "00")
    assert convert.concept_info_from_pb(convert.concept_info_to_pb(concept)).created_at is None


def test_inversion_params_round_trip_full_and_minimal() -> None:
    for params in (full_params(), InversionParams(token="<t>", init_text="dog")):
        assert convert.inversion_params_from_pb(convert.inversion_params_to_pb(params)) == params


def test_create_job_request_says_skip_register_on_the_wire() -> None:
    images = [TrainingImage(b"png", "a.png", "a photo of {}"), TrainingImage(b"png2")]
    message = convert.create_job_request_to_pb(images, full_params(), register_on_success=False)
    assert message.skip_register is True
    assert message.images[0].caption == "a photo of {}"
    assert not message.images[1].HasField("caption")
    assert [convert.training_image_from_pb(m) for m in message.images] == images
    assert not convert.create_job_request_to_pb(images, full_params()).skip_register


@pytest.mark.parametrize("state", list(JobState))
def test_job_info_round_trip(state: JobState) -> None:
    job = JobInfo(
        job_id="job-7",
        state=state,
        params=full_params(),
        num_images=4,
        register_on_success=False,
        step=10,
        total_steps=500,
        loss=0.125,
        created_at=WHEN,
        started_at=WHEN,
        finished_at=WHEN if state.is_terminal else None,
        error="out of memory" if state is JobState.FAILED else "",
        registered_token="<cat-toy>" if state is JobState.SUCCEEDED else "",
    )
    assert convert.job_info_from_pb(convert.job_info_to_pb(job)) == job


def test_job_without_state_is_refused() -> None:
    with pytest.raises(ValueError, match="job 'j' has no state"):
        convert.job_info_from_pb(jobs_pb2.JobInfo(job_id="j"))


def test_unknown_enum_number_is_named() -> None:
    message = jobs_pb2.JobInfo(job_id="j")
    message.state = 99  # type: ignore[assignment]
    with pytest.raises(ValueError, match="unknown job state 99"):
        convert.job_info_from_pb(message)


def test_job_events_from_watch_messages() -> None:
    progress = JobProgress(
        step=5, total_steps=100, loss=0.25, learning_rate=1e-3, steps_per_second=2.0, eta_seconds=47
    )
    message = jobs_pb2.WatchJobResponse(progress=convert.job_progress_to_pb(progress))
    assert convert.job_event_from_pb(message) == progress
    job = JobInfo("j", JobState.QUEUED, None, 3, True, 0, 100)
    assert (
        convert.job_event_from_pb(jobs_pb2.WatchJobResponse(job=convert.job_info_to_pb(job))) == job
    )


def test_job_file_needs_a_succeeded_job() -> None:
    running = JobInfo("j", JobState.RUNNING, None, 3, True, 1, 100)
    response = jobs_pb2.GetJobResponse(job=convert.job_info_to_pb(running))
    with pytest.raises(ValueError, match="job 'j' is running"):
        convert.job_file_from_pb(response)
    done = JobInfo("j", JobState.SUCCEEDED, None, 3, True, 100, 100)
    response = jobs_pb2.GetJobResponse(job=convert.job_info_to_pb(done), file=b"safetensors")
    assert convert.job_file_from_pb(response) == b"safetensors"


def test_server_info_round_trip() -> None:
    info = ServerInfo(
        model=ModelInfo("tiny-sd", "cd" * 32, "sd1", 32, 77, 64, 64, "epsilon"),
        backend="onnxruntime",
        device="cpu",
        execution_providers=("CPUExecutionProvider",),
        engine_profiles=(
            EngineProfile(
                "unet", "fp32", (TensorProfile("sample", (2, 4, 8, 8), (2, 4, 8, 8), (8, 4, 8, 8)),)
            ),
        ),
        limits=Limits(max_request_bytes=64 << 20, max_steps=150, max_queue=64),
        schedulers=tuple(Scheduler),
        server_version="0.1.0",
        api_version="textinv.v1",
        library_versions={"onnxruntime": "1.32.0", "grpcio": "1.85.3"},
    )
    assert convert.server_info_from_pb(convert.server_info_to_pb(info)) == info


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "x", "steps": 0}, "steps must be at least 1"),
        ({"prompt": "x", "width": 500}, "width must be a positive multiple of 8, got 500"),
        ({"prompt": "x", "seed": -1}, "seed must be in 0..2\\*\\*64-1, got -1"),
        ({"prompt": "x", "guidance_scale": -2.0}, "guidance_scale must be >= 0, got -2.0"),
    ],
)
def test_bad_generate_request_names_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GenerateRequest(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_vectors": 17}, "num_vectors must be in 1..16, got 17"),
        ({"init_text": " "}, "init_text must not be empty"),
        ({"resolution": 100}, "resolution must be a positive multiple of 8, got 100"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    ],
)
def test_bad_inversion_params_name_the_value(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"token": "<t>", "init_text": "dog", **kwargs}
    with pytest.raises(ValueError, match=message):
        InversionParams(**arguments)  # type: ignore[arg-type]


def test_caption_must_mark_the_token() -> None:
    with pytest.raises(ValueError, match="caption of 'a.png' must contain"):
        TrainingImage(b"png", "a.png", "a photo of a toy")


def test_the_client_limits_mirror_every_limit_the_wire_reports() -> None:
    import dataclasses

    from textinv_client.pb.v1 import server_info_pb2
    from textinv_client.types import Limits

    wire = {item.name for item in server_info_pb2.Limits.DESCRIPTOR.fields}
    assert {item.name for item in dataclasses.fields(Limits)} == wire


def test_an_inversion_seed_past_two_to_the_63_is_refused_by_the_client() -> None:
    with pytest.raises(ValueError, match=r"seed must be in 0..2\*\*63-1"):
        InversionParams(token="<t>", init_text="toy", seed=2**63)
