"""Inversion jobs: training images, the trainer's parameters, job state and progress."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from textinv_client.convert.wire import (
    enum_from_pb,
    enum_to_pb,
    from_message,
    invert,
    message_fields,
    oneof_from_pb,
    optional,
    or_none,
    timestamp_from_pb,
    timestamp_to_pb,
)
from textinv_client.pb.v1 import jobs_pb2
from textinv_client.types import (
    ConceptProperty,
    InversionParams,
    JobEvent,
    JobInfo,
    JobProgress,
    JobState,
    LrSchedule,
    Precision,
    TrainingImage,
)

PROPERTY_TO_PB: dict[ConceptProperty, jobs_pb2.ConceptProperty] = {
    ConceptProperty.OBJECT: jobs_pb2.CONCEPT_PROPERTY_OBJECT,
    ConceptProperty.STYLE: jobs_pb2.CONCEPT_PROPERTY_STYLE,
}
LR_SCHEDULE_TO_PB: dict[LrSchedule, jobs_pb2.LrSchedule] = {
    LrSchedule.CONSTANT: jobs_pb2.LR_SCHEDULE_CONSTANT,
    LrSchedule.COSINE: jobs_pb2.LR_SCHEDULE_COSINE,
}
PRECISION_TO_PB: dict[Precision, jobs_pb2.Precision] = {
    Precision.FP32: jobs_pb2.PRECISION_FP32,
    Precision.BF16: jobs_pb2.PRECISION_BF16,
    Precision.FP16: jobs_pb2.PRECISION_FP16,
    Precision.AUTO: jobs_pb2.PRECISION_AUTO,
}
JOB_STATE_TO_PB: dict[JobState, jobs_pb2.JobState] = {
    JobState.QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
PROPERTY_FROM_PB = invert(PROPERTY_TO_PB)
LR_SCHEDULE_FROM_PB = invert(LR_SCHEDULE_TO_PB)
PRECISION_FROM_PB = invert(PRECISION_TO_PB)
JOB_STATE_FROM_PB = invert(JOB_STATE_TO_PB)

# The job's moments, each a Timestamp on the wire and a datetime (or None) in JobInfo.
_JOB_TIMES = ("created_at", "started_at", "finished_at")


def training_image_to_pb(image: TrainingImage) -> jobs_pb2.TrainingImage:
    message = jobs_pb2.TrainingImage(data=image.data, filename=image.filename)
    if image.caption is not None:
        message.caption = image.caption
    return message


def training_image_from_pb(message: jobs_pb2.TrainingImage) -> TrainingImage:
    return TrainingImage(
        data=message.data, filename=message.filename, caption=optional(message, "caption")
    )


def inversion_params_to_pb(params: InversionParams) -> jobs_pb2.InversionParams:
    message = jobs_pb2.InversionParams(
        token=params.token,
        init_text=params.init_text,
        num_vectors=params.num_vectors,
        property=PROPERTY_TO_PB[params.property],
        steps=params.steps or 0,
        batch_size=params.batch_size or 0,
        grad_accum=params.grad_accum or 0,
        scale_lr=params.scale_lr,
        lr_schedule=enum_to_pb(
            LR_SCHEDULE_TO_PB, params.lr_schedule, jobs_pb2.LR_SCHEDULE_UNSPECIFIED
        ),
        warmup_steps=params.warmup_steps or 0,
        resolution=params.resolution or 0,
        precision=enum_to_pb(PRECISION_TO_PB, params.precision, jobs_pb2.PRECISION_UNSPECIFIED),
        checkpoint_every=params.checkpoint_every or 0,
    )
    if params.learning_rate is not None:
        message.learning_rate = params.learning_rate
    if params.seed is not None:
        message.seed = params.seed
    return message


def inversion_params_from_pb(message: jobs_pb2.InversionParams) -> InversionParams:
    """Raises ValueError, naming the field, for parameters that fail the client-side checks."""
    concept_property = enum_from_pb(PROPERTY_FROM_PB, message.property, "concept property")
    return InversionParams(
        token=message.token,
        init_text=message.init_text,
        num_vectors=message.num_vectors or 1,
        property=concept_property or ConceptProperty.OBJECT,
        steps=or_none(message.steps),
        batch_size=or_none(message.batch_size),
        grad_accum=or_none(message.grad_accum),
        learning_rate=optional(message, "learning_rate"),
        scale_lr=message.scale_lr,
        lr_schedule=enum_from_pb(LR_SCHEDULE_FROM_PB, message.lr_schedule, "lr schedule"),
        # warm-up 0 is a real value, but proto3 cannot tell it from "unset": both mean default.
        warmup_steps=or_none(message.warmup_steps),
        resolution=or_none(message.resolution),
        precision=enum_from_pb(PRECISION_FROM_PB, message.precision, "precision"),
        seed=optional(message, "seed"),
        checkpoint_every=or_none(message.checkpoint_every),
    )


def create_job_request_to_pb(
    images: Iterable[TrainingImage], params: InversionParams, register_on_success: bool = True
) -> jobs_pb2.CreateInversionJobRequest:
    return jobs_pb2.CreateInversionJobRequest(
        images=[training_image_to_pb(image) for image in images],
        params=inversion_params_to_pb(params),
        # The wire says "skip" so that proto3's default (false) means "register".
        skip_register=not register_on_success,
    )


def job_info_to_pb(job: JobInfo) -> jobs_pb2.JobInfo:
    converted = ("state", "params", "register_on_success", "loss", *_JOB_TIMES)
    message = jobs_pb2.JobInfo(
        **message_fields(job, skip=converted),
        state=JOB_STATE_TO_PB[job.state],
        skip_register=not job.register_on_success,
    )
    if job.params is not None:
        message.params.CopyFrom(inversion_params_to_pb(job.params))
    if job.loss is not None:
        message.loss = job.loss
    for name in _JOB_TIMES:
        timestamp_to_pb(getattr(job, name), getattr(message, name))
    return message


def job_info_from_pb(message: jobs_pb2.JobInfo) -> JobInfo:
    state = enum_from_pb(JOB_STATE_FROM_PB, message.state, "job state")
    if state is None:
        raise ValueError(f"job {message.job_id!r} has no state (JOB_STATE_UNSPECIFIED)")
    params = inversion_params_from_pb(message.params) if message.HasField("params") else None
    return from_message(
        JobInfo,
        message,
        state=state,
        params=params,
        register_on_success=not message.skip_register,
        loss=optional(message, "loss"),
        **{name: timestamp_from_pb(message, name) for name in _JOB_TIMES},
    )


def job_file_from_pb(response: jobs_pb2.GetJobResponse) -> bytes:
    """The learned concept file of a GetJob(include_file) reply; ValueError naming the job's state
    when it has none (it has one once SUCCEEDED, or FAILED only because its token was taken)."""
    job = job_info_from_pb(response.job)
    if not response.file:
        raise ValueError(f"job {job.job_id!r} is {job.state.value} and has no learned concept")
    return bytes(response.file)


def job_progress_to_pb(progress: JobProgress) -> jobs_pb2.JobProgress:
    return jobs_pb2.JobProgress(**message_fields(progress))


def job_progress_from_pb(message: jobs_pb2.JobProgress) -> JobProgress:
    return from_message(JobProgress, message)


def job_event_from_pb(message: jobs_pb2.WatchJobResponse) -> JobEvent:
    converters: dict[str, Callable[[Any], JobEvent]] = {
        "progress": job_progress_from_pb,
        "job": job_info_from_pb,
    }
    return oneof_from_pb(message, "event", converters, "WatchJob")


def job_states_to_pb(states: Iterable[JobState]) -> list[jobs_pb2.JobState]:
    return [JOB_STATE_TO_PB[JobState(state)] for state in states]
