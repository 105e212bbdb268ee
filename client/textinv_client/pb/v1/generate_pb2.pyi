from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Scheduler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCHEDULER_UNSPECIFIED: _ClassVar[Scheduler]
    SCHEDULER_DDIM: _ClassVar[Scheduler]
    SCHEDULER_EULER: _ClassVar[Scheduler]
    SCHEDULER_EULER_ANCESTRAL: _ClassVar[Scheduler]
    SCHEDULER_DPM_SOLVER_PP_2M: _ClassVar[Scheduler]
    SCHEDULER_PNDM: _ClassVar[Scheduler]
    SCHEDULER_DPM_SOLVER_PP_2M_SDE: _ClassVar[Scheduler]

class PromptSyntax(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMPT_SYNTAX_UNSPECIFIED: _ClassVar[PromptSyntax]
    PROMPT_SYNTAX_PLAIN: _ClassVar[PromptSyntax]
    PROMPT_SYNTAX_A1111: _ClassVar[PromptSyntax]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_WEBP: _ClassVar[ImageFormat]
SCHEDULER_UNSPECIFIED: Scheduler
SCHEDULER_DDIM: Scheduler
SCHEDULER_EULER: Scheduler
SCHEDULER_EULER_ANCESTRAL: Scheduler
SCHEDULER_DPM_SOLVER_PP_2M: Scheduler
SCHEDULER_PNDM: Scheduler
SCHEDULER_DPM_SOLVER_PP_2M_SDE: Scheduler
PROMPT_SYNTAX_UNSPECIFIED: PromptSyntax
PROMPT_SYNTAX_PLAIN: PromptSyntax
PROMPT_SYNTAX_A1111: PromptSyntax
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_WEBP: ImageFormat

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "steps", "guidance_scale", "seed", "width", "height", "num_images", "scheduler", "prompt_syntax", "output_format", "quality", "karras_sigmas", "clip_skip", "init_image", "strength", "prompt_2", "negative_prompt_2")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SYNTAX_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    KARRAS_SIGMAS_FIELD_NUMBER: _ClassVar[int]
    CLIP_SKIP_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_2_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_2_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    num_images: int
    scheduler: Scheduler
    prompt_syntax: PromptSyntax
    output_format: ImageFormat
    quality: int
    karras_sigmas: bool
    clip_skip: int
    init_image: bytes
    strength: float
    prompt_2: str
    negative_prompt_2: str
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., num_images: _Optional[int] = ..., scheduler: _Optional[_Union[Scheduler, str]] = ..., prompt_syntax: _Optional[_Union[PromptSyntax, str]] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., quality: _Optional[int] = ..., karras_sigmas: _Optional[bool] = ..., clip_skip: _Optional[int] = ..., init_image: _Optional[bytes] = ..., strength: _Optional[float] = ..., prompt_2: _Optional[str] = ..., negative_prompt_2: _Optional[str] = ...) -> None: ...

class GeneratedImage(_message.Message):
    __slots__ = ("png", "seed", "width", "height", "data", "format")
    PNG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    seed: int
    width: int
    height: int
    data: bytes
    format: ImageFormat
    def __init__(self, png: _Optional[bytes] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., data: _Optional[bytes] = ..., format: _Optional[_Union[ImageFormat, str]] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("queue_wait_ms", "text_encoder_ms", "unet_total_ms", "unet_step_mean_ms", "vae_decode_ms", "total_ms", "batch_size")
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_MS_FIELD_NUMBER: _ClassVar[int]
    UNET_TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    UNET_STEP_MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    VAE_DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    queue_wait_ms: float
    text_encoder_ms: float
    unet_total_ms: float
    unet_step_mean_ms: float
    vae_decode_ms: float
    total_ms: float
    batch_size: int
    def __init__(self, queue_wait_ms: _Optional[float] = ..., text_encoder_ms: _Optional[float] = ..., unet_total_ms: _Optional[float] = ..., unet_step_mean_ms: _Optional[float] = ..., vae_decode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "seed", "timings", "warnings")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[GeneratedImage]
    seed: int
    timings: StageTimings
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[_Union[GeneratedImage, _Mapping]]] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerateProgress(_message.Message):
    __slots__ = ("step", "total_steps", "step_ms")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_MS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    step_ms: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., step_ms: _Optional[float] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: GenerateProgress
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[GenerateProgress, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...
