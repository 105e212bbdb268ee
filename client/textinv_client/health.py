"""``python -m textinv_client.health HOST:PORT``: ask a server's standard gRPC health service.

Exits 0 when the server reports SERVING and 1 otherwise (NOT_SERVING while it loads or drains,
unreachable, timed out), printing one line. The container's HEALTHCHECK runs it. Beyond the
client's grpcio and protobuf it needs the standard health service's stubs, grpcio-health-checking:
the ``health`` extra (``pip install 'textinv-client[health]'``; the full textinv has it). Health
checks need no API key (the server lets ``grpc.health.v1`` through its auth).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc

from textinv_client.channel import ConnectionSettings, open_sync_channel, read_pem
from textinv_client.flags import add_flags, flag, from_flags

# The whole server (""), or one service, e.g. "textinv.v1.TextInv".
DEFAULT_SERVICE = ""


@dataclass(frozen=True)
class Probe:
    """What to ask and how to connect; every field but ``target`` is a flag."""

    target: str
    service: str = field(default=DEFAULT_SERVICE, metadata=flag("one service (default: all)"))
    timeout: float = field(default=3.0, metadata=flag("seconds (3)"))
    tls: bool = field(default=False, metadata=flag("connect with TLS"))
    ca: Path | None = field(default=None, metadata=flag("trusted root certificate (PEM) for --tls"))
    server_name: str | None = field(
        default=None, metadata=flag("name to check in the server's certificate")
    )

    def settings(self) -> ConnectionSettings:
        """ValueError names a bad target or a missing --ca file."""
        return ConnectionSettings(
            self.target,
            tls=self.tls,
            root_certificates=read_pem(self.ca, "--ca"),
            tls_server_name=self.server_name,
            timeout=self.timeout,
        )


def health_stubs() -> tuple[ModuleType, ModuleType]:
    """``grpc_health.v1``'s ``health_pb2`` and ``health_pb2_grpc``, or an error saying what to
    install (they are the ``health`` extra, not a dependency of the thin client)."""
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:
        raise RuntimeError(
            "the health probe needs grpcio-health-checking: pip install 'textinv-client[health]'"
        ) from None
    return health_pb2, health_pb2_grpc


def check(settings: ConnectionSettings, service: str = DEFAULT_SERVICE) -> int:
    """The server's reported status of ``service`` (a ``ServingStatus`` value); raises
    ``grpc.RpcError`` if unreachable."""
    health_pb2, health_pb2_grpc = health_stubs()
    with open_sync_channel(settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = stub.Check(request, timeout=settings.timeout)
    return reply.status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textinv_client.health", description=__doc__)
    parser.add_argument("target", help="HOST:PORT of a textinv server")
    add_flags(parser, Probe)
    args = parser.parse_args(argv)
    probe = from_flags(Probe, args, target=args.target)  # flags has no positionals
    try:
        settings = probe.settings()
        health_pb2, _ = health_stubs()
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        status = check(settings, probe.service)
    except grpc.RpcError as error:
        print(f"{probe.target}: unhealthy ({error.code().name}: {error.details()})")
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{probe.target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
