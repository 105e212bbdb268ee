"""The thin textinv client: sync and asyncio gRPC clients over plain dataclasses.

Imports only the generated stubs, grpcio, protobuf and the standard library (never torch), so
applications can depend on it cheaply::

    from textinv_client import GenerateRequest, TextInvClient

    with TextInvClient("localhost:50051", api_key="KEY") as textinv:
        result = textinv.generate(GenerateRequest(prompt="a photo of <cat-toy>", seed=1))
        open("out.png", "wb").write(result.images[0])
"""

__version__ = "0.1.0"

from textinv_client.async_client import AsyncTextInvClient
from textinv_client.errors import (
    AlreadyExists,
    Cancelled,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TextInvError,
    Unauthenticated,
    Unavailable,
)
from textinv_client.sync_client import TextInvClient
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

__all__ = [
    "AlreadyExists",
    "AsyncTextInvClient",
    "Cancelled",
    "ConceptInfo",
    "ConceptProperty",
    "DeadlineExceeded",
    "EngineProfile",
    "GenerateEvent",
    "GenerateProgress",
    "GenerateRequest",
    "GenerateResult",
    "Internal",
    "InvalidArgument",
    "InversionParams",
    "JobEvent",
    "JobInfo",
    "JobProgress",
    "JobState",
    "Limits",
    "LrSchedule",
    "ModelInfo",
    "NotFound",
    "PermissionDenied",
    "Precision",
    "ResourceExhausted",
    "Scheduler",
    "ServerInfo",
    "StageTimings",
    "TensorProfile",
    "TextInvClient",
    "TextInvError",
    "TrainingImage",
    "Unauthenticated",
    "Unavailable",
]
