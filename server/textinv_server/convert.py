"""Protobuf ↔ the server's plain dataclasses. The only module of the server that reads or builds
protobuf messages besides the servicer's signatures (STYLE: convert at the edge).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from textinv.errors import InvalidInputError
from textinv.trainer import InvertConfig
from textinv_client.choices import (
    Choice,
    ConceptProperty,
    ImageFormat,
    LrSchedule,
    Precision,
    PromptSyntax,
    Scheduler,
)
from textinv_client.convert import (
    JOB_STATE_FROM_PB,
    JOB_STATE_TO_PB,
    LR_SCHEDULE_FROM_PB,
    LR_SCHEDULE_TO_PB,
    PRECISION_FROM_PB,
    PRECISION_TO_PB,
    PROPERTY_FROM_PB,
    PROPERTY_TO_PB,
    SCHEDULER_FROM_PB,
    SCHEDULER_TO_PB,
)
from textinv_client.convert.generation import (
    IMAGE_FORMAT_FROM_PB,
    PROMPT_SYNTAX_FROM_PB,
    generated_image_to_pb,
)
from textinv_client.pb.v1 import (
    concepts_pb2,
    generate_pb2,
    jobs_pb2,
    server_info_pb2,
)
from textinv_server.config import BatchingConfig, Limits
from textinv_server.jobs import UploadedImage
from textinv_server.requests import GenerationRequest, GenerationResult
from textinv_server.rpc_requests import (
    ConceptLookup,
    CreateJobRequest,
    JobLookup,
    ListJobsRequest,
    Page,
    RegisterConceptRequest,
    page_of,
)
from textinv_server.store import ConceptRow, JobRow

C = TypeVar("C", bound=Choice)

# Each closed choice on the wire: proto enum value → member. The tables are the client's (one
# home for each mapping); the server adds what an UNSPECIFIED value (0) means where the field has
# a default, and refuses it where it has none (job states).
SCHEDULERS = {generate_pb2.SCHEDULER_UNSPECIFIED: Scheduler.DDIM, **SCHEDULER_FROM_PB}
PROMPT_SYNTAXES = {
    generate_pb2.PROMPT_SYNTAX_UNSPECIFIED: PromptSyntax.PLAIN,
    **PROMPT_SYNTAX_FROM_PB,
}
IMAGE_FORMATS = {generate_pb2.IMAGE_FORMAT_UNSPECIFIED: ImageFormat.PNG, **IMAGE_FORMAT_FROM_PB}
JOB_STATES = JOB_STATE_FROM_PB
PROPERTIES = {jobs_pb2.CONCEPT_PROPERTY_UNSPECIFIED: ConceptProperty.OBJECT, **PROPERTY_FROM_PB}
LR_SCHEDULES = {jobs_pb2.LR_SCHEDULE_UNSPECIFIED: LrSchedule.CONSTANT, **LR_SCHEDULE_FROM_PB}
PRECISIONS = {jobs_pb2.PRECISION_UNSPECIFIED: Precision.AUTO, **PRECISION_FROM_PB}

# Trainer defaults for server jobs: shorter than the CLI's 3000 steps, checkpointed often.
JOB_DEFAULTS: dict[str, Any] = {
    "steps": 500,
    "batch_size": 1,
    "grad_accum": 1,
    "lr": 5e-3,
    "checkpoint_every": 50,
}


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _enum(table: Mapping[Any, C], value: int, field: str) -> C:
    if value not in table:
        raise InvalidInputError(f"{field} {value} is not a known value")
    return table[value]


# --- generation -------------------------------------------------------------------------------


def generation_request_from_pb(
    message: generate_pb2.GenerateRequest, limits: Limits, default_size: int
) -> GenerationRequest:
    """The checked request; unset fields (0 or absent) keep ``GenerationRequest``'s defaults."""
    given: dict[str, Any] = {}
    if message.steps:
        given["steps"] = message.steps
    if message.HasField("guidance_scale"):
        given["guidance_scale"] = message.guidance_scale
    if message.init_image:
        given["init_image"] = message.init_image
    if message.HasField("strength"):
        given["strength"] = message.strength
    request = GenerationRequest(
        prompt=message.prompt,
        negative_prompt=message.negative_prompt,
        seed=message.seed if message.HasField("seed") else None,
        width=message.width or None,
        height=message.height or None,
        num_images=message.num_images or 1,
        scheduler=_enum(SCHEDULERS, message.scheduler, "scheduler"),
        prompt_syntax=_enum(PROMPT_SYNTAXES, message.prompt_syntax, "prompt_syntax"),
        karras_sigmas=message.karras_sigmas,
        clip_skip=message.clip_skip,
        output_format=_enum(IMAGE_FORMATS, message.output_format, "output_format"),
        quality=message.quality or None,
        prompt_2=message.prompt_2,
        negative_prompt_2=message.negative_prompt_2,
        **given,
    )
    request.check(limits, default_size)
    return request


def generate_response_to_pb(
    result: GenerationResult, queue_wait_ms: float
) -> generate_pb2.GenerateResponse:
    request, timings = result.request, result.timings
    images = [
        generated_image_to_pb(
            data,
            request.output_format,
            seed=seed,
            width=request.width or 0,
            height=request.height or 0,
        )
        for data, seed in zip(result.images, result.seeds, strict=True)
    ]
    return generate_pb2.GenerateResponse(
        images=images,
        seed=request.seed or 0,
        timings=generate_pb2.StageTimings(
            queue_wait_ms=queue_wait_ms,
            text_encoder_ms=timings.text_encoder_ms,
            unet_total_ms=timings.unet_total_ms,
            unet_step_mean_ms=timings.unet_step_mean_ms,
            vae_decode_ms=timings.vae_decode_ms,
            total_ms=timings.total_ms + queue_wait_ms,
            batch_size=timings.batch_size,
        ),
        warnings=list(result.warnings),
    )


# --- concepts ---------------------------------------------------------------------------------


def concept_info_to_pb(row: ConceptRow, widths: tuple[int, ...]) -> concepts_pb2.ConceptInfo:
    """``widths``: the model's per text encoder. The registry admits only concepts with one
    set per encoder, each of its width, so a row's later sets are the model's widths."""
    return concepts_pb2.ConceptInfo(
        token=row.token,
        num_vectors=row.num_vectors,
        embedding_dim=row.width,
        embedding_dims=[row.width, *widths[1:]],
        source_format=row.source_format,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        created_at=timestamp(row.created_at),
        job_id=row.job_id,
    )


def register_concept_from_pb(
    message: concepts_pb2.RegisterConceptRequest, limits: Limits
) -> RegisterConceptRequest:
    request = RegisterConceptRequest(
        data=message.data,
        filename=message.filename,
        token=message.token if message.HasField("token") else None,
        replace=message.replace,
    )
    request.check(limits)
    return request


def concept_lookup_from_pb(
    message: concepts_pb2.GetConceptRequest | concepts_pb2.DeleteConceptRequest, limits: Limits
) -> ConceptLookup:
    include = isinstance(message, concepts_pb2.GetConceptRequest) and message.include_file
    lookup = ConceptLookup(message.token, include_file=include)
    lookup.check(limits)
    return lookup


def concept_page_from_pb(message: concepts_pb2.ListConceptsRequest, limits: Limits) -> Page:
    return page_of(message.page_size, message.page_token, limits)


# --- jobs -------------------------------------------------------------------------------------


def create_job_from_pb(
    message: jobs_pb2.CreateInversionJobRequest,
    limits: Limits,
    default_resolution: int | None = None,
) -> CreateJobRequest:
    """The job's images and complete trainer config, checked (``CreateJobRequest.check``;
    ``default_resolution``, the model's native side, stands in for an unset resolution)."""
    images = tuple(
        UploadedImage(
            data=image.data,
            filename=image.filename,
            caption=image.caption if image.HasField("caption") else None,
            max_pixels=limits.max_training_image_pixels,
        )
        for image in message.images
    )
    params = message.params
    config = InvertConfig(
        images="",
        out="",
        token=params.token,
        init=params.init_text,
        vectors=params.num_vectors or 1,
        learnable_property=_enum(PROPERTIES, params.property, "params.property"),
        steps=params.steps or JOB_DEFAULTS["steps"],
        batch_size=params.batch_size or JOB_DEFAULTS["batch_size"],
        grad_accum=params.grad_accum or JOB_DEFAULTS["grad_accum"],
        lr=params.learning_rate if params.HasField("learning_rate") else JOB_DEFAULTS["lr"],
        scale_lr=params.scale_lr,
        lr_schedule=_enum(LR_SCHEDULES, params.lr_schedule, "params.lr_schedule"),
        warmup=params.warmup_steps,
        resolution=params.resolution or None,
        precision=_enum(PRECISIONS, params.precision, "params.precision"),
        seed=params.seed if params.HasField("seed") else secrets.randbelow(2**31),
        checkpoint_every=params.checkpoint_every or JOB_DEFAULTS["checkpoint_every"],
    )
    request = CreateJobRequest(images, config, message.skip_register, message.request_id)
    request.check(limits, default_resolution)
    return request


def job_lookup_from_pb(
    message: jobs_pb2.GetJobRequest | jobs_pb2.CancelJobRequest | jobs_pb2.WatchJobRequest,
    limits: Limits,
) -> JobLookup:
    include = isinstance(message, jobs_pb2.GetJobRequest) and message.include_file
    lookup = JobLookup(message.job_id, include_file=include)
    lookup.check(limits)
    return lookup


def list_jobs_from_pb(message: jobs_pb2.ListJobsRequest, limits: Limits) -> ListJobsRequest:
    # JOB_STATE_UNSPECIFIED (0) matches no job; any other unknown number is bad input.
    named = [value for value in message.states if value != jobs_pb2.JOB_STATE_UNSPECIFIED]
    states = tuple(_enum(JOB_STATES, value, "states") for value in named)
    return ListJobsRequest(
        states=states if message.states else None,
        page=page_of(message.page_size, message.page_token, limits),
    )


def _params_to_pb(params: dict[str, Any]) -> jobs_pb2.InversionParams:
    return jobs_pb2.InversionParams(
        token=params["token"],
        init_text=params["init"],
        num_vectors=params["vectors"],
        property=PROPERTY_TO_PB[params["learnable_property"]],
        steps=params["steps"],
        batch_size=params["batch_size"],
        grad_accum=params["grad_accum"],
        learning_rate=params["lr"],
        scale_lr=params["scale_lr"],
        lr_schedule=LR_SCHEDULE_TO_PB[params["lr_schedule"]],
        warmup_steps=params["warmup"],
        resolution=params["resolution"] or 0,
        precision=precision_to_pb(params["precision"]),
        seed=params["seed"],
        checkpoint_every=params["checkpoint_every"],
    )


def precision_to_pb(precision: str) -> jobs_pb2.Precision:
    """A job's precision on the wire: ``auto`` as UNSPECIFIED (which means auto), so that
    clients older than ``PRECISION_AUTO`` read the jobs they list."""
    if precision == Precision.AUTO:
        return jobs_pb2.PRECISION_UNSPECIFIED
    return PRECISION_TO_PB[Precision.parse(precision)]


def job_info_to_pb(row: JobRow) -> jobs_pb2.JobInfo:
    info = jobs_pb2.JobInfo(
        job_id=row.job_id,
        state=JOB_STATE_TO_PB[row.state],
        params=_params_to_pb(row.params),
        num_images=row.num_images,
        skip_register=row.skip_register,
        step=row.step,
        total_steps=row.total_steps,
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        finished_at=timestamp(row.finished_at),
        error=row.error,
        registered_token=row.registered_token,
    )
    if row.loss is not None:
        info.loss = row.loss
    return info


# --- server info ------------------------------------------------------------------------------


def schedulers_to_pb() -> list[generate_pb2.Scheduler]:
    """Every scheduler this server runs, as the wire's values."""
    return sorted(SCHEDULER_TO_PB.values())


def engine_profiles_to_pb(manifest: Any) -> list[server_info_pb2.EngineProfile]:
    """Each exported component's precision and input profiles; none for the torch backend."""
    if manifest is None:
        return []
    return [
        server_info_pb2.EngineProfile(
            component=component.value,
            precision=manifest.precision.value,
            inputs=[
                server_info_pb2.TensorProfile(
                    name=name, min_shape=profile.min, opt_shape=profile.opt, max_shape=profile.max
                )
                for name, profile in entry.spec.profile.items()
            ],
        )
        for component, entry in manifest.components.items()
    ]


def limits_to_pb(limits: Limits, batching: BatchingConfig) -> server_info_pb2.Limits:
    """Every limit the server enforces: each ``Limits`` field has a field of the same name."""
    return server_info_pb2.Limits(
        **{item.name: getattr(limits, item.name) for item in dataclasses.fields(limits)},
        max_batch=batching.max_batch,
        batch_wait_ms=int(batching.batch_wait_ms),
        max_queue=batching.max_queue,
    )
