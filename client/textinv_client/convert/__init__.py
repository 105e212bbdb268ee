"""Conversion between the client's dataclasses (textinv_client.types) and the textinv.v1 messages.

This is the only part of the client that touches protobuf messages field by field, one module per
area (generation, concepts, jobs, server info) over the shared :mod:`.wire` helpers. Each type has
a ``*_to_pb`` and a ``*_from_pb``; proto3's "zero means the server's default" becomes ``None``.
Everything is re-exported here, so callers write ``convert.job_info_from_pb``.
"""

from textinv_client.convert.concepts import concept_info_from_pb, concept_info_to_pb
from textinv_client.convert.generation import (
    SCHEDULER_FROM_PB,
    SCHEDULER_TO_PB,
    generate_event_from_pb,
    generate_progress_from_pb,
    generate_progress_to_pb,
    generate_request_from_pb,
    generate_request_to_pb,
    generate_result_from_pb,
    generate_result_to_pb,
    stage_timings_from_pb,
    stage_timings_to_pb,
)
from textinv_client.convert.jobs import (
    JOB_STATE_FROM_PB,
    JOB_STATE_TO_PB,
    LR_SCHEDULE_FROM_PB,
    LR_SCHEDULE_TO_PB,
    PRECISION_FROM_PB,
    PRECISION_TO_PB,
    PROPERTY_FROM_PB,
    PROPERTY_TO_PB,
    create_job_request_to_pb,
    inversion_params_from_pb,
    inversion_params_to_pb,
    job_event_from_pb,
    job_file_from_pb,
    job_info_from_pb,
    job_info_to_pb,
    job_progress_from_pb,
    job_progress_to_pb,
    job_states_to_pb,
    training_image_from_pb,
    training_image_to_pb,
)
from textinv_client.convert.server_info import server_info_from_pb, server_info_to_pb

__all__ = [
    "JOB_STATE_FROM_PB",
    "JOB_STATE_TO_PB",
    "LR_SCHEDULE_FROM_PB",
    "LR_SCHEDULE_TO_PB",
    "PRECISION_FROM_PB",
    "PRECISION_TO_PB",
    "PROPERTY_FROM_PB",
    "PROPERTY_TO_PB",
    "SCHEDULER_FROM_PB",
    "SCHEDULER_TO_PB",
    "concept_info_from_pb",
    "concept_info_to_pb",
    "create_job_request_to_pb",
    "generate_event_from_pb",
    "generate_progress_from_pb",
    "generate_progress_to_pb",
    "generate_request_from_pb",
    "generate_request_to_pb",
    "generate_result_from_pb",
    "generate_result_to_pb",
    "inversion_params_from_pb",
    "inversion_params_to_pb",
    "job_event_from_pb",
    "job_file_from_pb",
    "job_info_from_pb",
    "job_info_to_pb",
    "job_progress_from_pb",
    "job_progress_to_pb",
    "job_states_to_pb",
    "server_info_from_pb",
    "server_info_to_pb",
    "stage_timings_from_pb",
    "stage_timings_to_pb",
    "training_image_from_pb",
    "training_image_to_pb",
]
