"""``python -m textinv_client.health HOST:PORT``: ask a server's standard gRPC health service.

Exits 0 when the server reports SERVING and 1 otherwise (NOT_SERVING while it loads or drains,
unreachable, timed out), printing one line. The container's HEALTHCHECK runs it. It needs only
grpcio and grpcio-health-checking (no torch, like the rest of the client). Health checks need
no API key (the server lets ``grpc.health.v1`` through its auth).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from textinv_client.channel import ConnectionSettings, open_sync_channel, read_pem

# The whole server (""), or one service, e.g. "textinv.v1.TextInv".
DEFAULT_SERVICE = ""


def check(
    settings: ConnectionSettings, service: str = DEFAULT_SERVICE
) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    """The server's reported status of ``service``; raises ``grpc.RpcError`` if unreachable."""
    with open_sync_channel(settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = stub.Check(request, timeout=settings.timeout)
    return reply.status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m textinv_client.health", description=__doc__)
    parser.add_argument("target", help="HOST:PORT of a textinv server")
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="one service (default: all)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (3)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca", help="trusted root certificate (PEM) for --tls")
    parser.add_argument("--server-name", help="name to check in the server's certificate")
    args = parser.parse_args(argv)
    try:
        settings = ConnectionSettings(
            args.target,
            tls=args.tls,
            root_certificates=read_pem(args.ca, "--ca"),
            tls_server_name=args.server_name,
            timeout=args.timeout,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        status = check(settings, args.service)
    except grpc.RpcError as error:
        print(f"{args.target}: unhealthy ({error.code().name}: {error.details()})")
        return 1
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
