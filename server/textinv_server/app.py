"""``textinv serve``: the gRPC server on ``grpc.aio``, from start-up to graceful shutdown.

Start-up: load the backend, open the data folder (concepts and jobs), run one warm-up generation,
and only then report SERVING on the standard ``grpc.health.v1`` service. Shutdown (SIGTERM or
SIGINT): report NOT_SERVING, stop accepting calls, let in-flight calls finish within the grace
period (then cancel them), checkpoint running jobs, and close the database.

Every connection has the same HTTP/2 limits (``CONNECTIONS``): streams per connection, keepalive
and a maximum age. API keys are checked before anything loads; without one the server warns.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from textinv.errors import InvalidInputError
from textinv_client.pb.v1 import textinv_pb2, textinv_pb2_grpc
from textinv_server import metrics
from textinv_server.config import ServerConfig, TlsConfig
from textinv_server.interceptors import ApiKeyInterceptor, StatusInterceptor
from textinv_server.keys import KeyEntry, check_unique, load_key_file, plain_key_entries
from textinv_server.requests import GenerationRequest
from textinv_server.service import Service, build_service
from textinv_server.servicer import TextInvServicer

log = logging.getLogger(__name__)
SERVICE_NAME = textinv_pb2.DESCRIPTOR.services_by_name["TextInv"].full_name
SECOND_MS, MINUTE_MS, HOUR_MS = 1000, 60_000, 3_600_000


@dataclass(frozen=True)
class ConnectionPolicy:
    """The HTTP/2 limits of every client connection, as gRPC core channel arguments."""

    # Calls one connection may have in flight; more wait in the client for a free stream instead
    # of failing, so one client cannot hold every handler. RFC 9113 §6.5.2 advises at least 100.
    max_concurrent_streams: int = 100
    # Ping a connection after a minute without reads and drop it if the ping is not answered in
    # 20 s: a client that vanished (crashed host, dropped NAT entry) frees its streams, such as a
    # WatchJob, within about 80 s instead of gRPC's default of 2 hours.
    keepalive_time_ms: int = 1 * MINUTE_MS
    keepalive_timeout_ms: int = 20 * SECOND_MS
    # Clients may ping idle connections (to keep them open through load balancers' idle timeouts),
    # and so does the server; without this, gRPC allows a client one ping per 2 hours on a
    # connection with no call, and answers a second with GOAWAY.
    keepalive_permit_without_calls: int = 1
    # A client may ping at most every 10 s while no data flows; after 2 faster pings ("strikes")
    # it gets GOAWAY (ENHANCE_YOUR_CALM), so pings cannot become a flood.
    min_client_ping_interval_ms: int = 10 * SECOND_MS
    max_ping_strikes: int = 2
    # After 30 minutes (gRPC adds ±10% jitter) a connection gets GOAWAY and the client's next call
    # opens a new one, transparently: long-lived clients spread over replicas added since, and
    # no connection's state grows for ever.
    max_connection_age_ms: int = 30 * MINUTE_MS
    # Calls in flight on an aged connection may finish. A WatchJob stream lasts as long as its
    # job and the client does not re-watch, so the grace covers a long job; after it, whatever is
    # still open on the connection is cancelled.
    max_connection_age_grace_ms: int = 24 * HOUR_MS

    def options(self, max_message_bytes: int) -> list[tuple[str, int]]:
        """The server's channel arguments; messages are bounded by the server's upload limit
        (gRPC's default of 4 MiB is too small for a job's images)."""
        return [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", self.keepalive_permit_without_calls),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_client_ping_interval_ms),
            ("grpc.http2.max_ping_strikes", self.max_ping_strikes),
            ("grpc.max_connection_age_ms", self.max_connection_age_ms),
            ("grpc.max_connection_age_grace_ms", self.max_connection_age_grace_ms),
        ]


CONNECTIONS = ConnectionPolicy()


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
    """Check the keys, load everything, bind the port, warm up, then report SERVING."""
    check_api_keys(config.api_keys, config.keys_file)
    service = await asyncio.to_thread(build_service, config)
    server = aio.server(
        interceptors=_interceptors(config),
        options=CONNECTIONS.options(config.limits.max_request_bytes),
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


def check_api_keys(keys: Sequence[str], keys_file: Path | None = None) -> tuple[KeyEntry, ...]:
    """Every key the server accepts: the plain keys, checked (refuse a key that no client could
    send), then the key file's entries. Messages never quote a key."""
    for number, key in enumerate(keys, start=1):
        if not key.strip():
            raise InvalidInputError(
                f"--api-key #{number} (or $TEXTINV_API_KEYS) is empty or only whitespace: "
                "give a real key, or none"
            )
        if not key.isascii() or not key.isprintable() or " " in key:
            raise InvalidInputError(
                f"--api-key #{number} (or $TEXTINV_API_KEYS) must be printable ASCII without "
                "spaces: gRPC metadata cannot carry anything else, so no client could send it"
            )
    entries = plain_key_entries(keys)
    if keys_file is not None:
        entries += load_key_file(keys_file)
        if not entries:
            # Someone meant to require keys; an open server would be the wrong way to fail.
            raise InvalidInputError(
                f"key file {keys_file} holds no key: add one with `textinv keys add`"
            )
    check_unique(entries, "--api-key and --keys")
    return entries


def _interceptors(config: ServerConfig) -> list[aio.ServerInterceptor]:
    interceptors: list[aio.ServerInterceptor] = []
    entries = check_api_keys(config.api_keys, config.keys_file)
    if entries:
        interceptors.append(ApiKeyInterceptor(entries))
    else:
        log.warning(
            "no API key configured: anyone who can reach %s may call every RPC; "
            "give --keys FILE or --api-key (or $TEXTINV_KEYS_FILE, $TEXTINV_API_KEYS) "
            "before exposing this server",
            config.host,
        )
    # This order: ApiKeyInterceptor's wrapper runs outside StatusInterceptor's, so the principal is
    # set before the status mapping sees the handler's errors (textinv_server.interceptors).
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
