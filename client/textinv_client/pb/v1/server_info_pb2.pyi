from . import generate_pb2 as _generate_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "sha256", "family", "embedding_dim", "max_prompt_tokens", "native_width", "native_height", "prediction_type", "text_encoder_layers", "text_encoder_widths")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NATIVE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    NATIVE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TEXT_ENCODER_WIDTHS_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    family: str
    embedding_dim: int
    max_prompt_tokens: int
    native_width: int
    native_height: int
    prediction_type: str
    text_encoder_layers: int
    text_encoder_widths: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ..., family: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., native_width: _Optional[int] = ..., native_height: _Optional[int] = ..., prediction_type: _Optional[str] = ..., text_encoder_layers: _Optional[int] = ..., text_encoder_widths: _Optional[_Iterable[int]] = ...) -> None: ...

class TensorProfile(_message.Message):
    __slots__ = ("name", "min_shape", "opt_shape", "max_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OPT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    min_shape: _containers.RepeatedScalarFieldContainer[int]
    opt_shape: _containers.RepeatedScalarFieldContainer[int]
    max_shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., min_shape: _Optional[_Iterable[int]] = ..., opt_shape: _Optional[_Iterable[int]] = ..., max_shape: _Optional[_Iterable[int]] = ...) -> None: ...

class EngineProfile(_message.Message):
    __slots__ = ("component", "precision", "inputs")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    component: str
    precision: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorProfile]
    def __init__(self, component: _Optional[str] = ..., precision: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorProfile, _Mapping]]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_request_bytes", "max_image_pixels", "max_images_per_request", "max_steps", "max_prompt_chars", "max_concepts_per_prompt", "max_concept_file_bytes", "max_images_per_job", "max_concurrent_jobs", "max_batch", "batch_wait_ms", "max_queue", "max_queued_jobs", "max_job_steps", "max_guidance_scale", "max_token_chars", "max_init_text_chars", "max_caption_chars", "max_filename_chars", "max_page_token_chars", "max_page_size", "max_job_id_chars", "max_training_resolution", "max_concepts", "max_stored_jobs", "job_retention_seconds", "max_job_bytes", "max_job_attempts", "max_training_pixels_per_step", "max_training_image_pixels", "max_prompt_chunks", "max_init_image_pixels")
    MAX_REQUEST_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCEPTS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCEPT_FILE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_JOB_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKEN_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_INIT_TEXT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_FILENAME_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_TOKEN_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_ID_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINING_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_STORED_JOBS_FIELD_NUMBER: _ClassVar[int]
    JOB_RETENTION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINING_PIXELS_PER_STEP_FIELD_NUMBER: _ClassVar[int]
    MAX_TRAINING_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAX_INIT_IMAGE_PIXELS_FIELD_NUMBER: _ClassVar[int]
    max_request_bytes: int
    max_image_pixels: int
    max_images_per_request: int
    max_steps: int
    max_prompt_chars: int
    max_concepts_per_prompt: int
    max_concept_file_bytes: int
    max_images_per_job: int
    max_concurrent_jobs: int
    max_batch: int
    batch_wait_ms: int
    max_queue: int
    max_queued_jobs: int
    max_job_steps: int
    max_guidance_scale: float
    max_token_chars: int
    max_init_text_chars: int
    max_caption_chars: int
    max_filename_chars: int
    max_page_token_chars: int
    max_page_size: int
    max_job_id_chars: int
    max_training_resolution: int
    max_concepts: int
    max_stored_jobs: int
    job_retention_seconds: int
    max_job_bytes: int
    max_job_attempts: int
    max_training_pixels_per_step: int
    max_training_image_pixels: int
    max_prompt_chunks: int
    max_init_image_pixels: int
    def __init__(self, max_request_bytes: _Optional[int] = ..., max_image_pixels: _Optional[int] = ..., max_images_per_request: _Optional[int] = ..., max_steps: _Optional[int] = ..., max_prompt_chars: _Optional[int] = ..., max_concepts_per_prompt: _Optional[int] = ..., max_concept_file_bytes: _Optional[int] = ..., max_images_per_job: _Optional[int] = ..., max_concurrent_jobs: _Optional[int] = ..., max_batch: _Optional[int] = ..., batch_wait_ms: _Optional[int] = ..., max_queue: _Optional[int] = ..., max_queued_jobs: _Optional[int] = ..., max_job_steps: _Optional[int] = ..., max_guidance_scale: _Optional[float] = ..., max_token_chars: _Optional[int] = ..., max_init_text_chars: _Optional[int] = ..., max_caption_chars: _Optional[int] = ..., max_filename_chars: _Optional[int] = ..., max_page_token_chars: _Optional[int] = ..., max_page_size: _Optional[int] = ..., max_job_id_chars: _Optional[int] = ..., max_training_resolution: _Optional[int] = ..., max_concepts: _Optional[int] = ..., max_stored_jobs: _Optional[int] = ..., job_retention_seconds: _Optional[int] = ..., max_job_bytes: _Optional[int] = ..., max_job_attempts: _Optional[int] = ..., max_training_pixels_per_step: _Optional[int] = ..., max_training_image_pixels: _Optional[int] = ..., max_prompt_chunks: _Optional[int] = ..., max_init_image_pixels: _Optional[int] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("model", "backend", "device", "execution_providers", "engine_profiles", "limits", "schedulers", "server_version", "api_version", "library_versions", "precision", "precision_reason", "cpu_instruction_sets", "store", "replica_id", "tenant")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_PROFILES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_REASON_FIELD_NUMBER: _ClassVar[int]
    CPU_INSTRUCTION_SETS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    model: ModelInfo
    backend: str
    device: str
    execution_providers: _containers.RepeatedScalarFieldContainer[str]
    engine_profiles: _containers.RepeatedCompositeFieldContainer[EngineProfile]
    limits: Limits
    schedulers: _containers.RepeatedScalarFieldContainer[_generate_pb2.Scheduler]
    server_version: str
    api_version: str
    library_versions: _containers.ScalarMap[str, str]
    precision: str
    precision_reason: str
    cpu_instruction_sets: _containers.RepeatedScalarFieldContainer[str]
    store: str
    replica_id: str
    tenant: str
    def __init__(self, model: _Optional[_Union[ModelInfo, _Mapping]] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., execution_providers: _Optional[_Iterable[str]] = ..., engine_profiles: _Optional[_Iterable[_Union[EngineProfile, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., schedulers: _Optional[_Iterable[_Union[_generate_pb2.Scheduler, str]]] = ..., server_version: _Optional[str] = ..., api_version: _Optional[str] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., precision: _Optional[str] = ..., precision_reason: _Optional[str] = ..., cpu_instruction_sets: _Optional[_Iterable[str]] = ..., store: _Optional[str] = ..., replica_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...
