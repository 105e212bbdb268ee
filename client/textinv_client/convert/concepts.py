"""Registered concepts."""

from __future__ import annotations

from textinv_client.convert.wire import (
    from_message,
    message_fields,
    timestamp_from_pb,
    timestamp_to_pb,
)
from textinv_client.pb.v1 import concepts_pb2
from textinv_client.types import ConceptInfo


def concept_info_to_pb(info: ConceptInfo) -> concepts_pb2.ConceptInfo:
    message = concepts_pb2.ConceptInfo(**message_fields(info, skip=["created_at"]))
    timestamp_to_pb(info.created_at, message.created_at)
    return message


def concept_info_from_pb(message: concepts_pb2.ConceptInfo) -> ConceptInfo:
    return from_message(
        ConceptInfo,
        message,
        created_at=timestamp_from_pb(message, "created_at"),
        embedding_dims=tuple(message.embedding_dims),
    )
