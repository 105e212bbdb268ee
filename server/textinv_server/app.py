"""``textinv serve``: the gRPC server on ``grpc.aio``, from start-up to graceful shutdown.

Start-up: load the backend, open the data folder (concepts and jobs), run one warm-up generation,
and only then report SERVING on the standard ``grpc.health.v1`` service. Shutdown (SIGTERM or
SIGINT): report NOT_SERVING, stop accepting calls, let in-flight calls finish within the grace
period (then cancel them), checkpoint running jobs, and close the database.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from textinv_client.pb.v1 import textinv_pb2, textinv_pb2_grpc
from textinv_server import metrics
from textinv_server.config import ServerConfig, TlsConfig
from textinv_server.interceptors import ApiKeyInterceptor, StatusInterceptor
from textinv_server.requests import GenerationRequest
from textinv_server.service import Service, build_service
from textinv_server.servicer import TextInvServicer

log = logging.getLogger(__name__)
SERVICE_NAME = textinv_pb2.DESCRIPTOR.services_by_name["TextInv"].full_name


class RunningServer:
    """A started server: its port, and how to stop it."""

    def __init__(
        self,
        server: aio.Server,
        service: Service,
        health_servicer: health.aio.HealthServicer,
        port: int,
        metrics_server: WSGIServer | None = None,
    ) -> None:
        self.server, self.service, self.health, self.port = server, service, health_servicer, port
        self.metrics_server = metrics_server

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_server is None else self.metrics_server.server_port

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        await self.server.stop(grace_s)
        await self.service.batcher.close(0)
        await asyncio.to_thread(self.service.jobs.stop, grace_s)
        self.service.store.close()
        log.info("server stopped")


async def start_server(config: ServerConfig) -> RunningServer:
    """Load everything, bind the port, warm up, then report SERVING."""
    service = await asyncio.to_thread(build_service, config)
    server = aio.server(
        interceptors=_interceptors(config),
        options=[
            ("grpc.max_receive_message_length", config.limits.max_request_bytes),
            ("grpc.max_send_message_length", config.limits.max_request_bytes),
        ],
    )
    textinv_pb2_grpc.add_TextInvServicer_to_server(TextInvServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME), server
    )
    port = _bind(server, config)
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    service.batcher.start()
    service.jobs.start()
    if config.warmup:
        await _warm_up(service)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    metrics_server = None
    if config.metrics_port is not None:
        metrics_server = metrics.serve_metrics(config.metrics_port, config.host)
    log.info("serving %s on %s:%d (backend %s)", config.model, config.host, port, config.backend)
    return RunningServer(server, service, health_servicer, port, metrics_server)


async def serve(config: ServerConfig, on_ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(config)
    if on_ready is not None:
        on_ready(running.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: %.0f s grace for in-flight calls", config.grace_seconds)
    await running.stop(config.grace_seconds)


def _interceptors(config: ServerConfig) -> list[aio.ServerInterceptor]:
    interceptors: list[aio.ServerInterceptor] = []
    if config.api_keys:
        interceptors.append(ApiKeyInterceptor(config.api_keys))
    interceptors.append(StatusInterceptor())
    return interceptors


def _bind(server: aio.Server, config: ServerConfig) -> int:
    address = f"{config.host}:{config.port}"
    if config.tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, _server_credentials(config.tls))
    if port == 0:
        raise OSError(f"could not bind {address}")
    return port


def _server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    client_ca = _read(tls.client_ca) if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(tls.key), _read(tls.cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise OSError(f"cannot read TLS file {str(path)!r}: {error.strerror}") from error


async def _warm_up(service: Service) -> None:
    """One small generation through the whole path, so SERVING means it works."""
    side = service.pipeline.host.default_resolution
    request = GenerationRequest(prompt="a photo", steps=1, seed=0, width=side, height=side)
    await service.generate(request)
    log.info("warm-up generation succeeded")
