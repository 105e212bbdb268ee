"""What a server runs and allows: its model, backend, engine profiles, limits and versions."""

from __future__ import annotations

from textinv_client.convert.generation import SCHEDULER_FROM_PB, SCHEDULER_TO_PB
from textinv_client.convert.wire import from_message, message_fields
from textinv_client.pb.v1 import server_info_pb2
from textinv_client.types import EngineProfile, Limits, ModelInfo, ServerInfo, TensorProfile


def _engine_profile_to_pb(profile: EngineProfile) -> server_info_pb2.EngineProfile:
    return server_info_pb2.EngineProfile(
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


def _engine_profile_from_pb(message: server_info_pb2.EngineProfile) -> EngineProfile:
    return EngineProfile(
        component=message.component,
        precision=message.precision,
        inputs=tuple(
            TensorProfile(
                name=tensor.name,
                min_shape=tuple(tensor.min_shape),
                opt_shape=tuple(tensor.opt_shape),
                max_shape=tuple(tensor.max_shape),
            )
            for tensor in message.inputs
        ),
    )


def server_info_to_pb(info: ServerInfo) -> server_info_pb2.GetServerInfoResponse:
    message = server_info_pb2.GetServerInfoResponse(
        backend=info.backend,
        device=info.device,
        execution_providers=list(info.execution_providers),
        engine_profiles=[_engine_profile_to_pb(profile) for profile in info.engine_profiles],
        limits=server_info_pb2.Limits(**message_fields(info.limits)),
        schedulers=[SCHEDULER_TO_PB[scheduler] for scheduler in info.schedulers],
        server_version=info.server_version,
        api_version=info.api_version,
        library_versions=dict(info.library_versions),
        precision=info.precision,
        precision_reason=info.precision_reason,
        cpu_instruction_sets=list(info.cpu_instruction_sets),
        store=info.store,
        replica_id=info.replica_id,
        tenant=info.tenant,
    )
    if info.model is not None:
        message.model.CopyFrom(server_info_pb2.ModelInfo(**message_fields(info.model)))
    return message


def server_info_from_pb(message: server_info_pb2.GetServerInfoResponse) -> ServerInfo:
    return ServerInfo(
        model=_model_info_from_pb(message.model) if message.HasField("model") else None,
        backend=message.backend,
        device=message.device,
        execution_providers=tuple(message.execution_providers),
        engine_profiles=tuple(_engine_profile_from_pb(p) for p in message.engine_profiles),
        limits=from_message(Limits, message.limits),
        # A newer server may offer schedulers this client does not know; they are left out.
        schedulers=tuple(
            SCHEDULER_FROM_PB[n] for n in message.schedulers if n in SCHEDULER_FROM_PB
        ),
        server_version=message.server_version,
        api_version=message.api_version,
        library_versions=dict(message.library_versions),
        precision=message.precision,
        precision_reason=message.precision_reason,
        cpu_instruction_sets=tuple(message.cpu_instruction_sets),
        store=message.store,
        replica_id=message.replica_id,
        tenant=message.tenant,
    )


def _model_info_from_pb(message: server_info_pb2.ModelInfo) -> ModelInfo:
    return from_message(ModelInfo, message, text_encoder_widths=tuple(message.text_encoder_widths))
