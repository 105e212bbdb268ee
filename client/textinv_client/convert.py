"""Conversion between the client's dataclasses (textinv_client.types) and the textinv.v1 messages.

This is the only module of the client that touches protobuf messages field by field. Each type has
a ``*_to_pb`` and a ``*_from_pb``; proto3's "zero means the server's default" becomes ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from textinv_client.pb.v1 import concepts_pb2, generate_pb2, jobs_pb2, server_info_pb2
from textinv_client.types import (
    ConceptInfo,
    ConceptProperty,
    EngineProfile,
    GenerateEvent,
    GenerateProgress,
    GenerateRequest,
    GenerateResult,
    InversionParams,
    JobEvent,
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

E = TypeVar("E")
# A protobuf enum type (an int subclass in the generated stubs).
P = TypeVar("P", bound=int)

SCHEDULER_TO_PB: dict[Scheduler, generate_pb2.Scheduler] = {
    Scheduler.DDIM: generate_pb2.SCHEDULER_DDIM,
    Scheduler.EULER: generate_pb2.SCHEDULER_EULER,
    Scheduler.EULER_ANCESTRAL: generate_pb2.SCHEDULER_EULER_ANCESTRAL,
    Scheduler.DPM_SOLVER_PP_2M: generate_pb2.SCHEDULER_DPM_SOLVER_PP_2M,
    Scheduler.PNDM: generate_pb2.SCHEDULER_PNDM,
}
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
}
JOB_STATE_TO_PB: dict[JobState, jobs_pb2.JobState] = {
    JobState.QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}


def _invert(table: dict[E, P]) -> dict[int, E]:
    return {number: member for member, number in table.items()}


SCHEDULER_FROM_PB = _invert(SCHEDULER_TO_PB)
PROPERTY_FROM_PB = _invert(PROPERTY_TO_PB)
LR_SCHEDULE_FROM_PB = _invert(LR_SCHEDULE_TO_PB)
PRECISION_FROM_PB = _invert(PRECISION_TO_PB)
JOB_STATE_FROM_PB = _invert(JOB_STATE_TO_PB)


def _enum_to_pb(table: dict[E, P], value: E | None, unspecified: P) -> P:
    # None is the enum's UNSPECIFIED zero: "the server's default".
    return unspecified if value is None else table[value]


def _enum_from_pb(table: dict[int, E], number: int, what: str) -> E | None:
    if number == 0:
        return None
    if number not in table:
        raise ValueError(f"unknown {what} {number} from the server; is the client older?")
    return table[number]


def _or_none(value: int) -> int | None:
    # proto3 scalars use 0 for "not set".
    return value if value else None


def _timestamp_to_pb(when: datetime | None, target: Timestamp) -> None:
    if when is not None:
        target.FromDatetime(when)


def _timestamp_from_pb(message: Message, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=timezone.utc)


# -- generation ---------------------------------------------------------------------------------


def generate_request_to_pb(request: GenerateRequest) -> generate_pb2.GenerateRequest:
    message = generate_pb2.GenerateRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps or 0,
        width=request.width or 0,
        height=request.height or 0,
        num_images=request.num_images,
        scheduler=_enum_to_pb(
            SCHEDULER_TO_PB, request.scheduler, generate_pb2.SCHEDULER_UNSPECIFIED
        ),
    )
    if request.guidance_scale is not None:
        message.guidance_scale = request.guidance_scale
    if request.seed is not None:
        message.seed = request.seed
    return message


def generate_request_from_pb(message: generate_pb2.GenerateRequest) -> GenerateRequest:
    """Raises ValueError, naming the field, for a request that fails the client-side checks."""
    return GenerateRequest(
        prompt=message.prompt,
        negative_prompt=message.negative_prompt,
        steps=_or_none(message.steps),
        guidance_scale=message.guidance_scale if message.HasField("guidance_scale") else None,
        seed=message.seed if message.HasField("seed") else None,
        width=_or_none(message.width),
        height=_or_none(message.height),
        num_images=message.num_images or 1,
        scheduler=_enum_from_pb(SCHEDULER_FROM_PB, message.scheduler, "scheduler"),
    )


def stage_timings_to_pb(timings: StageTimings) -> generate_pb2.StageTimings:
    return generate_pb2.StageTimings(
        queue_wait_ms=timings.queue_wait_ms,
        text_encoder_ms=timings.text_encoder_ms,
        unet_total_ms=timings.unet_total_ms,
        unet_step_mean_ms=timings.unet_step_mean_ms,
        vae_decode_ms=timings.vae_decode_ms,
        total_ms=timings.total_ms,
        batch_size=timings.batch_size,
    )


def stage_timings_from_pb(message: generate_pb2.StageTimings) -> StageTimings:
    return StageTimings(
        queue_wait_ms=message.queue_wait_ms,
        text_encoder_ms=message.text_encoder_ms,
        unet_total_ms=message.unet_total_ms,
        unet_step_mean_ms=message.unet_step_mean_ms,
        vae_decode_ms=message.vae_decode_ms,
        total_ms=message.total_ms,
        batch_size=message.batch_size or 1,
    )


def generate_result_to_pb(
    result: GenerateResult, sizes: Iterable[tuple[int, int]] = ()
) -> generate_pb2.GenerateResponse:
    """``sizes`` gives each image's (width, height); without it they are sent as 0 (unknown)."""
    size_list = list(sizes) or [(0, 0)] * len(result.images)
    images = [
        generate_pb2.GeneratedImage(png=png, seed=seed, width=width, height=height)
        for png, seed, (width, height) in zip(result.images, result.seeds, size_list, strict=True)
    ]
    return generate_pb2.GenerateResponse(
        images=images,
        seed=result.seed,
        timings=stage_timings_to_pb(result.timings),
        warnings=list(result.warnings),
    )


def generate_result_from_pb(message: generate_pb2.GenerateResponse) -> GenerateResult:
    return GenerateResult(
        images=tuple(image.png for image in message.images),
        seeds=tuple(image.seed for image in message.images),
        seed=message.seed,
        timings=stage_timings_from_pb(message.timings),
        warnings=tuple(message.warnings),
    )


def generate_progress_to_pb(progress: GenerateProgress) -> generate_pb2.GenerateProgress:
    return generate_pb2.GenerateProgress(
        step=progress.step, total_steps=progress.total_steps, step_ms=progress.step_ms
    )


def generate_progress_from_pb(message: generate_pb2.GenerateProgress) -> GenerateProgress:
    return GenerateProgress(
        step=message.step, total_steps=message.total_steps, step_ms=message.step_ms
    )


def generate_event_from_pb(message: generate_pb2.GenerateStreamResponse) -> GenerateEvent:
    kind = message.WhichOneof("event")
    if kind == "progress":
        return generate_progress_from_pb(message.progress)
    if kind == "result":
        return generate_result_from_pb(message.result)
    raise ValueError(f"GenerateStream message carries no known event (got {kind!r})")


# -- concepts -----------------------------------------------------------------------------------


def concept_info_to_pb(info: ConceptInfo) -> concepts_pb2.ConceptInfo:
    message = concepts_pb2.ConceptInfo(
        token=info.token,
        num_vectors=info.num_vectors,
        embedding_dim=info.embedding_dim,
        source_format=info.source_format,
        size_bytes=info.size_bytes,
        sha256=info.sha256,
        job_id=info.job_id,
    )
    _timestamp_to_pb(info.created_at, message.created_at)
    return message


def concept_info_from_pb(message: concepts_pb2.ConceptInfo) -> ConceptInfo:
    return ConceptInfo(
        token=message.token,
        num_vectors=message.num_vectors,
        embedding_dim=message.embedding_dim,
        source_format=message.source_format,
        size_bytes=message.size_bytes,
        sha256=message.sha256,
        created_at=_timestamp_from_pb(message, "created_at"),
        job_id=message.job_id,
    )


# -- inversion jobs -----------------------------------------------------------------------------


def training_image_to_pb(image: TrainingImage) -> jobs_pb2.TrainingImage:
    message = jobs_pb2.TrainingImage(data=image.data, filename=image.filename)
    if image.caption is not None:
        message.caption = image.caption
    return message


def training_image_from_pb(message: jobs_pb2.TrainingImage) -> TrainingImage:
    return TrainingImage(
        data=message.data,
        filename=message.filename,
        caption=message.caption if message.HasField("caption") else None,
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
        lr_schedule=_enum_to_pb(
            LR_SCHEDULE_TO_PB, params.lr_schedule, jobs_pb2.LR_SCHEDULE_UNSPECIFIED
        ),
        warmup_steps=params.warmup_steps or 0,
        resolution=params.resolution or 0,
        precision=_enum_to_pb(PRECISION_TO_PB, params.precision, jobs_pb2.PRECISION_UNSPECIFIED),
        checkpoint_every=params.checkpoint_every or 0,
    )
    if params.learning_rate is not None:
        message.learning_rate = params.learning_rate
    if params.seed is not None:
        message.seed = params.seed
    return message


def inversion_params_from_pb(message: jobs_pb2.InversionParams) -> InversionParams:
    """Raises ValueError, naming the field, for parameters that fail the client-side checks."""
    concept_property = _enum_from_pb(PROPERTY_FROM_PB, message.property, "concept property")
    return InversionParams(
        token=message.token,
        init_text=message.init_text,
        num_vectors=message.num_vectors or 1,
        property=concept_property or ConceptProperty.OBJECT,
        steps=_or_none(message.steps),
        batch_size=_or_none(message.batch_size),
        grad_accum=_or_none(message.grad_accum),
        learning_rate=message.learning_rate if message.HasField("learning_rate") else None,
        scale_lr=message.scale_lr,
        lr_schedule=_enum_from_pb(LR_SCHEDULE_FROM_PB, message.lr_schedule, "lr schedule"),
        # warm-up 0 is a real value, but proto3 cannot tell it from "unset": both mean default.
        warmup_steps=_or_none(message.warmup_steps),
        resolution=_or_none(message.resolution),
        precision=_enum_from_pb(PRECISION_FROM_PB, message.precision, "precision"),
        seed=message.seed if message.HasField("seed") else None,
        checkpoint_every=_or_none(message.checkpoint_every),
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
    message = jobs_pb2.JobInfo(
        job_id=job.job_id,
        state=JOB_STATE_TO_PB[job.state],
        num_images=job.num_images,
        skip_register=not job.register_on_success,
        step=job.step,
        total_steps=job.total_steps,
        error=job.error,
        registered_token=job.registered_token,
    )
    if job.params is not None:
        message.params.CopyFrom(inversion_params_to_pb(job.params))
    if job.loss is not None:
        message.loss = job.loss
    _timestamp_to_pb(job.created_at, message.created_at)
    _timestamp_to_pb(job.started_at, message.started_at)
    _timestamp_to_pb(job.finished_at, message.finished_at)
    return message


def job_info_from_pb(message: jobs_pb2.JobInfo) -> JobInfo:
    state = _enum_from_pb(JOB_STATE_FROM_PB, message.state, "job state")
    if state is None:
        raise ValueError(f"job {message.job_id!r} has no state (JOB_STATE_UNSPECIFIED)")
    return JobInfo(
        job_id=message.job_id,
        state=state,
        params=inversion_params_from_pb(message.params) if message.HasField("params") else None,
        num_images=message.num_images,
        register_on_success=not message.skip_register,
        step=message.step,
        total_steps=message.total_steps,
        loss=message.loss if message.HasField("loss") else None,
        created_at=_timestamp_from_pb(message, "created_at"),
        started_at=_timestamp_from_pb(message, "started_at"),
        finished_at=_timestamp_from_pb(message, "finished_at"),
        error=message.error,
        registered_token=message.registered_token,
    )


def job_file_from_pb(response: jobs_pb2.GetJobResponse) -> bytes:
    """The learned concept file of a GetJob(include_file) reply; ValueError unless SUCCEEDED."""
    job = job_info_from_pb(response.job)
    if job.state is not JobState.SUCCEEDED or not response.file:
        raise ValueError(
            f"job {job.job_id!r} is {job.state.value}: only a succeeded job has a concept file"
        )
    return bytes(response.file)


def job_progress_to_pb(progress: JobProgress) -> jobs_pb2.JobProgress:
    return jobs_pb2.JobProgress(
        step=progress.step,
        total_steps=progress.total_steps,
        loss=progress.loss,
        learning_rate=progress.learning_rate,
        steps_per_second=progress.steps_per_second,
        eta_seconds=progress.eta_seconds,
    )


def job_progress_from_pb(message: jobs_pb2.JobProgress) -> JobProgress:
    return JobProgress(
        step=message.step,
        total_steps=message.total_steps,
        loss=message.loss,
        learning_rate=message.learning_rate,
        steps_per_second=message.steps_per_second,
        eta_seconds=message.eta_seconds,
    )


def job_event_from_pb(message: jobs_pb2.WatchJobResponse) -> JobEvent:
    kind = message.WhichOneof("event")
    if kind == "progress":
        return job_progress_from_pb(message.progress)
    if kind == "job":
        return job_info_from_pb(message.job)
    raise ValueError(f"WatchJob message carries no known event (got {kind!r})")


def job_states_to_pb(states: Iterable[JobState]) -> list[jobs_pb2.JobState]:
    return [JOB_STATE_TO_PB[JobState(state)] for state in states]


# -- server info --------------------------------------------------------------------------------


def server_info_to_pb(info: ServerInfo) -> server_info_pb2.GetServerInfoResponse:
    message = server_info_pb2.GetServerInfoResponse(
        backend=info.backend,
        device=info.device,
        execution_providers=list(info.execution_providers),
        engine_profiles=[
            server_info_pb2.EngineProfile(
                component=profile.component,
                precision=profile.precision,
                inputs=[
                    server_info_pb2.TensorProfile(
                        name=tensor.name,
                        min_shape=list(tensor.min_shape),
                        opt_shape=list(tensor.opt_shape),
                        max_shape=list(tensor.max_shape),
                    )
                    for tensor in profile.inputs
                ],
            )
            for profile in info.engine_profiles
        ],
        limits=server_info_pb2.Limits(**vars(info.limits)),
        schedulers=[SCHEDULER_TO_PB[scheduler] for scheduler in info.schedulers],
        server_version=info.server_version,
        api_version=info.api_version,
        library_versions=dict(info.library_versions),
    )
    if info.model is not None:
        message.model.CopyFrom(server_info_pb2.ModelInfo(**vars(info.model)))
    return message


def _tensor_profile_from_pb(message: server_info_pb2.TensorProfile) -> TensorProfile:
    return TensorProfile(
        name=message.name,
        min_shape=tuple(message.min_shape),
        opt_shape=tuple(message.opt_shape),
        max_shape=tuple(message.max_shape),
    )


def server_info_from_pb(message: server_info_pb2.GetServerInfoResponse) -> ServerInfo:
    model = message.model
    limits = message.limits
    return ServerInfo(
        model=(
            ModelInfo(
                name=model.name,
                sha256=model.sha256,
                family=model.family,
                embedding_dim=model.embedding_dim,
                max_prompt_tokens=model.max_prompt_tokens,
                native_width=model.native_width,
                native_height=model.native_height,
                prediction_type=model.prediction_type,
            )
            if message.HasField("model")
            else None
        ),
        backend=message.backend,
        device=message.device,
        execution_providers=tuple(message.execution_providers),
        engine_profiles=tuple(
            EngineProfile(
                component=profile.component,
                precision=profile.precision,
                inputs=tuple(_tensor_profile_from_pb(tensor) for tensor in profile.inputs),
            )
            for profile in message.engine_profiles
        ),
        limits=Limits(**{name: getattr(limits, name) for name in Limits.__dataclass_fields__}),
        # A newer server may offer schedulers this client does not know; they are left out.
        schedulers=tuple(
            SCHEDULER_FROM_PB[n] for n in message.schedulers if n in SCHEDULER_FROM_PB
        ),
        server_version=message.server_version,
        api_version=message.api_version,
        library_versions=dict(message.library_versions),
    )
