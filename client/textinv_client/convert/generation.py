"""Generation: requests, results, per-stage timings and streamed progress."""

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
)
from textinv_client.pb.v1 import generate_pb2
from textinv_client.types import (
    GenerateEvent,
    GenerateProgress,
    GenerateRequest,
    GenerateResult,
    ImageFormat,
    PromptSyntax,
    Scheduler,
    StageTimings,
)

SCHEDULER_TO_PB: dict[Scheduler, generate_pb2.Scheduler] = {
    Scheduler.DDIM: generate_pb2.SCHEDULER_DDIM,
    Scheduler.EULER: generate_pb2.SCHEDULER_EULER,
    Scheduler.EULER_ANCESTRAL: generate_pb2.SCHEDULER_EULER_ANCESTRAL,
    Scheduler.DPM_SOLVER_PP_2M: generate_pb2.SCHEDULER_DPM_SOLVER_PP_2M,
    Scheduler.PNDM: generate_pb2.SCHEDULER_PNDM,
    Scheduler.DPM_SOLVER_PP_2M_SDE: generate_pb2.SCHEDULER_DPM_SOLVER_PP_2M_SDE,
}
SCHEDULER_FROM_PB = invert(SCHEDULER_TO_PB)
PROMPT_SYNTAX_TO_PB: dict[PromptSyntax, generate_pb2.PromptSyntax] = {
    PromptSyntax.PLAIN: generate_pb2.PROMPT_SYNTAX_PLAIN,
    PromptSyntax.A1111: generate_pb2.PROMPT_SYNTAX_A1111,
}
PROMPT_SYNTAX_FROM_PB = invert(PROMPT_SYNTAX_TO_PB)
IMAGE_FORMAT_TO_PB: dict[ImageFormat, generate_pb2.ImageFormat] = {
    ImageFormat.PNG: generate_pb2.IMAGE_FORMAT_PNG,
    ImageFormat.JPEG: generate_pb2.IMAGE_FORMAT_JPEG,
    ImageFormat.WEBP: generate_pb2.IMAGE_FORMAT_WEBP,
}
IMAGE_FORMAT_FROM_PB = invert(IMAGE_FORMAT_TO_PB)


def generate_request_to_pb(request: GenerateRequest) -> generate_pb2.GenerateRequest:
    message = generate_pb2.GenerateRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps or 0,
        width=request.width or 0,
        height=request.height or 0,
        num_images=request.num_images,
        scheduler=enum_to_pb(
            SCHEDULER_TO_PB, request.scheduler, generate_pb2.SCHEDULER_UNSPECIFIED
        ),
        prompt_syntax=enum_to_pb(
            PROMPT_SYNTAX_TO_PB, request.prompt_syntax, generate_pb2.PROMPT_SYNTAX_UNSPECIFIED
        ),
        output_format=enum_to_pb(
            IMAGE_FORMAT_TO_PB, request.output_format, generate_pb2.IMAGE_FORMAT_UNSPECIFIED
        ),
        quality=request.quality or 0,
        karras_sigmas=request.karras_sigmas,
        clip_skip=request.clip_skip,
        prompt_2=request.prompt_2,
        negative_prompt_2=request.negative_prompt_2,
    )
    if request.guidance_scale is not None:
        message.guidance_scale = request.guidance_scale
    if request.seed is not None:
        message.seed = request.seed
    if request.init_image is not None:
        message.init_image = request.init_image
    if request.strength is not None:
        message.strength = request.strength
    return message


def generate_request_from_pb(message: generate_pb2.GenerateRequest) -> GenerateRequest:
    """Raises ValueError, naming the field, for a request that fails the client-side checks."""
    return GenerateRequest(
        prompt=message.prompt,
        negative_prompt=message.negative_prompt,
        steps=or_none(message.steps),
        guidance_scale=optional(message, "guidance_scale"),
        seed=optional(message, "seed"),
        width=or_none(message.width),
        height=or_none(message.height),
        num_images=message.num_images or 1,
        scheduler=enum_from_pb(SCHEDULER_FROM_PB, message.scheduler, "scheduler"),
        prompt_syntax=enum_from_pb(PROMPT_SYNTAX_FROM_PB, message.prompt_syntax, "prompt syntax"),
        output_format=enum_from_pb(IMAGE_FORMAT_FROM_PB, message.output_format, "image format"),
        quality=or_none(message.quality),
        karras_sigmas=message.karras_sigmas,
        clip_skip=message.clip_skip,
        init_image=message.init_image or None,
        strength=optional(message, "strength"),
        prompt_2=message.prompt_2,
        negative_prompt_2=message.negative_prompt_2,
    )


def stage_timings_to_pb(timings: StageTimings) -> generate_pb2.StageTimings:
    return generate_pb2.StageTimings(**message_fields(timings))


def stage_timings_from_pb(message: generate_pb2.StageTimings) -> StageTimings:
    return from_message(StageTimings, message, batch_size=message.batch_size or 1)


def generate_result_to_pb(
    result: GenerateResult, sizes: Iterable[tuple[int, int]] = ()
) -> generate_pb2.GenerateResponse:
    """``sizes`` gives each image's (width, height); without it they are sent as 0 (unknown)."""
    size_list = list(sizes) or [(0, 0)] * len(result.images)
    images = [
        generated_image_to_pb(data, result.format, seed=seed, width=width, height=height)
        for data, seed, (width, height) in zip(result.images, result.seeds, size_list, strict=True)
    ]
    return generate_pb2.GenerateResponse(
        images=images,
        seed=result.seed,
        timings=stage_timings_to_pb(result.timings),
        warnings=list(result.warnings),
    )


def generated_image_to_pb(
    data: bytes, image_format: ImageFormat, *, seed: int, width: int, height: int
) -> generate_pb2.GeneratedImage:
    """PNG bytes go in ``png`` (what v1 clients read); JPEG and WebP in ``data``."""
    png = image_format is ImageFormat.PNG
    return generate_pb2.GeneratedImage(
        png=data if png else b"",
        data=b"" if png else data,
        format=IMAGE_FORMAT_TO_PB[image_format],
        seed=seed,
        width=width,
        height=height,
    )


def generate_result_from_pb(message: generate_pb2.GenerateResponse) -> GenerateResult:
    formats = {
        enum_from_pb(IMAGE_FORMAT_FROM_PB, image.format, "image format") or ImageFormat.PNG
        for image in message.images
    }
    if len(formats) > 1:
        raise ValueError(f"the server sent images in several formats: {sorted(formats)}")
    return GenerateResult(
        images=tuple(image.png or image.data for image in message.images),
        format=formats.pop() if formats else ImageFormat.PNG,
        seeds=tuple(image.seed for image in message.images),
        seed=message.seed,
        timings=stage_timings_from_pb(message.timings),
        warnings=tuple(message.warnings),
    )


def generate_progress_to_pb(progress: GenerateProgress) -> generate_pb2.GenerateProgress:
    return generate_pb2.GenerateProgress(**message_fields(progress))


def generate_progress_from_pb(message: generate_pb2.GenerateProgress) -> GenerateProgress:
    return from_message(GenerateProgress, message)


def generate_event_from_pb(message: generate_pb2.GenerateStreamResponse) -> GenerateEvent:
    converters: dict[str, Callable[[Any], GenerateEvent]] = {
        "progress": generate_progress_from_pb,
        "result": generate_result_from_pb,
    }
    return oneof_from_pb(message, "event", converters, "GenerateStream")
