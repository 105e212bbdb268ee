import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConceptProperty(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONCEPT_PROPERTY_UNSPECIFIED: _ClassVar[ConceptProperty]
    CONCEPT_PROPERTY_OBJECT: _ClassVar[ConceptProperty]
    CONCEPT_PROPERTY_STYLE: _ClassVar[ConceptProperty]

class LrSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULE_UNSPECIFIED: _ClassVar[LrSchedule]
    LR_SCHEDULE_CONSTANT: _ClassVar[LrSchedule]
    LR_SCHEDULE_COSINE: _ClassVar[LrSchedule]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]
    PRECISION_FP16: _ClassVar[Precision]
    PRECISION_AUTO: _ClassVar[Precision]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
CONCEPT_PROPERTY_UNSPECIFIED: ConceptProperty
CONCEPT_PROPERTY_OBJECT: ConceptProperty
CONCEPT_PROPERTY_STYLE: ConceptProperty
LR_SCHEDULE_UNSPECIFIED: LrSchedule
LR_SCHEDULE_CONSTANT: LrSchedule
LR_SCHEDULE_COSINE: LrSchedule
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_BF16: Precision
PRECISION_FP16: Precision
PRECISION_AUTO: Precision
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class TrainingImage(_message.Message):
    __slots__ = ("data", "filename", "caption")
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    filename: str
    caption: str
    def __init__(self, data: _Optional[bytes] = ..., filename: _Optional[str] = ..., caption: _Optional[str] = ...) -> None: ...

class InversionParams(_message.Message):
    __slots__ = ("token", "init_text", "num_vectors", "property", "steps", "batch_size", "grad_accum", "learning_rate", "scale_lr", "lr_schedule", "warmup_steps", "resolution", "precision", "seed", "checkpoint_every")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INIT_TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_VECTORS_FIELD_NUMBER: _ClassVar[int]
    PROPERTY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRAD_ACCUM_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SCALE_LR_FIELD_NUMBER: _ClassVar[int]
    LR_SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    WARMUP_STEPS_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_FIELD_NUMBER: _ClassVar[int]
    token: str
    init_text: str
    num_vectors: int
    property: ConceptProperty
    steps: int
    batch_size: int
    grad_accum: int
    learning_rate: float
    scale_lr: bool
    lr_schedule: LrSchedule
    warmup_steps: int
    resolution: int
    precision: Precision
    seed: int
    checkpoint_every: int
    def __init__(self, token: _Optional[str] = ..., init_text: _Optional[str] = ..., num_vectors: _Optional[int] = ..., property: _Optional[_Union[ConceptProperty, str]] = ..., steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., grad_accum: _Optional[int] = ..., learning_rate: _Optional[float] = ..., scale_lr: _Optional[bool] = ..., lr_schedule: _Optional[_Union[LrSchedule, str]] = ..., warmup_steps: _Optional[int] = ..., resolution: _Optional[int] = ..., precision: _Optional[_Union[Precision, str]] = ..., seed: _Optional[int] = ..., checkpoint_every: _Optional[int] = ...) -> None: ...

class CreateInversionJobRequest(_message.Message):
    __slots__ = ("images", "params", "skip_register", "request_id")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SKIP_REGISTER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[TrainingImage]
    params: InversionParams
    skip_register: bool
    request_id: str
    def __init__(self, images: _Optional[_Iterable[_Union[TrainingImage, _Mapping]]] = ..., params: _Optional[_Union[InversionParams, _Mapping]] = ..., skip_register: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "state", "params", "num_images", "skip_register", "step", "total_steps", "loss", "created_at", "started_at", "finished_at", "error", "registered_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_IMAGES_FIELD_NUMBER: _ClassVar[int]
    SKIP_REGISTER_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    params: InversionParams
    num_images: int
    skip_register: bool
    step: int
    total_steps: int
    loss: float
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    error: str
    registered_token: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., params: _Optional[_Union[InversionParams, _Mapping]] = ..., num_images: _Optional[int] = ..., skip_register: _Optional[bool] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[str] = ..., registered_token: _Optional[str] = ...) -> None: ...

class CreateInversionJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobInfo
    def __init__(self, job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id", "include_file")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FILE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    include_file: bool
    def __init__(self, job_id: _Optional[str] = ..., include_file: _Optional[bool] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job", "file")
    JOB_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    job: JobInfo
    file: bytes
    def __init__(self, job: _Optional[_Union[JobInfo, _Mapping]] = ..., file: _Optional[bytes] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: JobInfo
    def __init__(self, job: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobProgress(_message.Message):
    __slots__ = ("step", "total_steps", "loss", "learning_rate", "steps_per_second", "eta_seconds")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    loss: float
    learning_rate: float
    steps_per_second: float
    eta_seconds: float
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., steps_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job", "progress")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    job: JobInfo
    progress: JobProgress
    def __init__(self, job: _Optional[_Union[JobInfo, _Mapping]] = ..., progress: _Optional[_Union[JobProgress, _Mapping]] = ...) -> None: ...
