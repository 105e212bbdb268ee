"""Connection settings shared by the sync and async clients: targets (one server or several
replicas), TLS, API key, deadlines, sizes, and the gRPC service config that balances calls over
the replicas and retries the idempotent ones on UNAVAILABLE.
"""

from __future__ import annotations

import ipaddress
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from textinv_client.pb.v1 import textinv_pb2

# gRPC refuses messages over 4 MiB by default; training images, concept files and batches of PNGs
# are larger than that. The server's own limit is reported by GetServerInfo.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Generous, because one generation on a CPU with a real model takes tens of seconds.
DEFAULT_TIMEOUT_S = 120.0

PemSource = bytes | str | os.PathLike[str]
ChannelOptions = Sequence[tuple[str, Any]]
# One address, a comma-separated list of them, or a sequence of addresses.
Target = str | Sequence[str]

SERVICE = textinv_pb2.DESCRIPTOR.services_by_name["TextInv"].full_name
# The methods a retry cannot harm: reads, Generate (its seeds are in the request or drawn anew),
# CancelJob (a finished job is returned unchanged) and CreateInversionJob, because the clients
# always send a request_id that makes a repeated create return the first job. Not
# RegisterConcept or DeleteConcept: a retry after a lost reply would answer ALREADY_EXISTS or
# NOT_FOUND for a call that succeeded. The health service has no entry, so it is never retried.
RETRIED_METHODS = (
    "Generate",
    "GenerateStream",
    "GetConcept",
    "ListConcepts",
    "CreateInversionJob",
    "GetJob",
    "ListJobs",
    "CancelJob",
    "WatchJob",
    "GetServerInfo",
)
# Four attempts, 0.1 s then 0.2 s then 0.4 s apart at most (gRPC jitters each wait down to zero):
# long enough to step past a replica that restarts or drains, short against the deadlines. gRPC
# retries only an UNAVAILABLE that came before any response message, so a stream that has
# yielded is never replayed.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# gRPC's throttle: each failure spends a token, each success earns 0.1; below half of the 10
# tokens the channel stops retrying, so a fleet that is down is not hammered four times over.
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}
# round_robin spreads calls over every address the target resolves to and skips those that
# refuse connections; pick_first is gRPC's default (one connection, to the first that answers).
LOAD_BALANCING_POLICIES = ("round_robin", "pick_first")
# Targets with one of these schemes are already gRPC targets and pass through untouched.
GRPC_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract", "vsock")


def join_target(target: Target) -> str:
    """A sequence of addresses as one comma-separated target; a string as it is."""
    if isinstance(target, str):
        return target
    if any("," in address for address in target):
        raise ValueError(f"addresses in a sequence must not hold commas, got {list(target)!r}")
    return ",".join(target)


def grpc_target(target: str) -> str:
    """The gRPC target of ``target``.

    One HOST:PORT, or a target with a gRPC scheme (``dns:///name:port``, ``ipv4:...``), is used
    as given. A comma-separated list of IP:PORT (IPv6 as ``[ADDR]:PORT``) becomes gRPC's
    multi-address ``ipv4:`` or ``ipv6:`` target. gRPC has no target for several host names, so a
    list of them is refused: one DNS name that resolves to every replica does that job.
    """
    if "," not in target or target.split(":", 1)[0] in GRPC_SCHEMES:
        return target
    addresses = [_ip_port(entry.strip(), target) for entry in target.split(",")]
    versions = {address.version for address, _ in addresses}
    if len(versions) > 1:
        raise ValueError(f"target {target!r} mixes IPv4 and IPv6 addresses; gRPC cannot")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{address}:{port}" for address, port in addresses)
    return "ipv6:" + ",".join(f"[{address}]:{port}" for address, port in addresses)


def _ip_port(entry: str, target: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """One IP:PORT entry of a list; ``target`` (the whole list) is named in errors."""
    if not entry:
        raise ValueError(f"target {target!r} has an empty entry")
    host, _, port = entry.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r} in target {target!r} is not HOST:PORT")
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        raise ValueError(f"{entry!r} in target {target!r}: write IPv6 addresses as [ADDR]:PORT")
    try:
        return ipaddress.ip_address(host[1:-1] if bracketed else host), int(port)
    except ValueError:
        raise ValueError(
            f"target {target!r} lists the host name {host!r}; a list may hold only IP addresses "
            "(gRPC has no target for several names): give one DNS name that resolves to every "
            "replica instead, e.g. 'dns:///textinv.example:50051'"
        ) from None


def create_request_id(request_id: str | None) -> str:
    """The idempotency key of one CreateInversionJob: the caller's, checked as the server takes
    it (1 to 64 printable ASCII characters), or a fresh random one, so that a retried create
    returns the job the first attempt started instead of starting a second."""
    if request_id is None:
        return uuid.uuid4().hex
    if not 0 < len(request_id) <= 64 or not request_id.isascii() or not request_id.isprintable():
        raise ValueError(
            f"request_id must be 1 to 64 printable ASCII characters, got {request_id!r}"
        )
    return request_id


def read_pem(source: PemSource | None, what: str) -> bytes | None:
    """PEM bytes as given, or read from a path; ``what`` names the option in errors."""
    if source is None or isinstance(source, bytes):
        return source
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {str(path)!r}")
    return path.read_bytes()


def _check_api_key(api_key: str | None) -> None:
    # Metadata values must be printable ASCII; a newline from a pasted key would break the call in
    # an obscure way, so say so up front (without echoing the secret).
    if api_key is not None and (
        not api_key or not api_key.isascii() or not api_key.isprintable() or " " in api_key
    ):
        raise ValueError("api_key must be non-empty printable ASCII without spaces")


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect. TLS is used when ``tls`` is set or any certificate is given."""

    # HOST:PORT; several replicas as "IP:PORT,IP:PORT"; or a gRPC target ("dns:///NAME:PORT").
    target: str
    api_key: str | None = None
    tls: bool = False
    # Trusted root certificates (PEM); None uses the system's roots.
    root_certificates: bytes | None = None
    # Client certificate chain and key (PEM) for mutual TLS; both or neither.
    client_certificate: bytes | None = None
    client_key: bytes | None = None
    # Overrides the name checked against the server's certificate (e.g. "localhost" in tests).
    tls_server_name: str | None = None
    # Default deadline of each call in seconds; None means no deadline.
    timeout: float | None = DEFAULT_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # Retry the idempotent methods (RETRIED_METHODS) on UNAVAILABLE, per RETRY_POLICY.
    retries: bool = True
    # How calls spread over the addresses the target resolves to (LOAD_BALANCING_POLICIES).
    load_balancing: str = "round_robin"

    def __post_init__(self) -> None:
        if not self.target or self.target != self.target.strip():
            raise ValueError(f"target must be HOST:PORT, got {self.target!r}")
        grpc_target(self.target)  # raises on a bad list
        if "," in self.target and self.uses_tls and not self.tls_server_name:
            # gRPC would check the servers' certificates against the whole list as one name.
            raise ValueError(
                f"target {self.target!r} lists several addresses: over TLS, set tls_server_name "
                "to the name in the servers' certificate, or use one DNS name (dns:///NAME:PORT)"
            )
        if self.load_balancing not in LOAD_BALANCING_POLICIES:
            raise ValueError(
                f"load_balancing must be one of {LOAD_BALANCING_POLICIES}, "
                f"got {self.load_balancing!r}"
            )
        _check_api_key(self.api_key)
        if (self.client_certificate is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both a client certificate and a client key")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds (or None), got {self.timeout}")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, got {self.max_message_bytes}")

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(
            pem is not None
            for pem in (self.root_certificates, self.client_certificate, self.client_key)
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata: the API key as a bearer token, when there is one."""
        if self.api_key is None:
            return ()
        return (("authorization", f"Bearer {self.api_key}"),)

    @property
    def grpc_target(self) -> str:
        """The target as gRPC spells it (a list of addresses becomes ``ipv4:a:p,b:p``)."""
        return grpc_target(self.target)

    def service_config(self) -> str:
        """The gRPC service config (JSON): the balancing policy and, unless off, the retries."""
        config: dict[str, Any] = {"loadBalancingConfig": [{self.load_balancing: {}}]}
        if self.retries:
            names = [{"service": SERVICE, "method": method} for method in RETRIED_METHODS]
            config["methodConfig"] = [{"name": names, "retryPolicy": RETRY_POLICY}]
            config["retryThrottling"] = RETRY_THROTTLING
        return json.dumps(config)

    def channel_options(self, extra: ChannelOptions = ()) -> list[tuple[str, Any]]:
        """The channel's options; one in ``extra`` replaces ours of the same name."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.service_config", self.service_config()),
            # Ours, not one a DNS TXT record might publish; retries are on by default in
            # grpcio >= 1.40 and asked for here all the same.
            ("grpc.service_config_disable_resolution", 1),
            ("grpc.enable_retries", 1),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        replaced = {name for name, _ in extra}
        return [option for option in options if option[0] not in replaced] + list(extra)

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )

    def deadline(self, timeout: float | None) -> float | None:
        """The deadline of one call: its own timeout, else the client's default."""
        return self.timeout if timeout is None else timeout


def open_sync_channel(settings: ConnectionSettings, extra: ChannelOptions = ()) -> grpc.Channel:
    options = settings.channel_options(extra)
    target = settings.grpc_target
    if settings.uses_tls:
        return grpc.secure_channel(target, settings.credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


def open_async_channel(
    settings: ConnectionSettings, extra: ChannelOptions = ()
) -> grpc.aio.Channel:
    options = settings.channel_options(extra)
    target = settings.grpc_target
    if settings.uses_tls:
        return grpc.aio.secure_channel(target, settings.credentials(), options=options)
    return grpc.aio.insecure_channel(target, options=options)


class ClientBase:
    """Constructor shared by the sync and async clients; subclasses open their own channel."""

    def __init__(
        self,
        target: Target,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: bool = True,
        load_balancing: str = "round_robin",
        channel_options: ChannelOptions = (),
    ) -> None:
        """Connect to a textinv server at ``target``: HOST:PORT, or several replicas as
        ``"IP:PORT,IP:PORT"`` or a sequence of addresses, or ``"dns:///NAME:PORT"`` for a name
        that resolves to every replica (e.g. a headless Kubernetes Service).

        ``api_key`` is sent as ``authorization: Bearer KEY``. TLS is used when ``tls`` is set or
        any certificate is given; certificates are PEM bytes or paths to PEM files, and a client
        certificate plus key turn on mutual TLS. ``timeout`` is each call's default deadline in
        seconds (None: no deadline). ``max_message_bytes`` caps messages both ways (64 MiB by
        default instead of gRPC's 4 MiB). Calls spread over the replicas by ``load_balancing``
        (``round_robin``, or ``pick_first``), and the idempotent ones are retried on UNAVAILABLE
        unless ``retries`` is off. Over TLS, a list of addresses needs ``tls_server_name`` (the
        name in the servers' certificate), since gRPC would check the list as one name.
        """
        self.settings = ConnectionSettings(
            target=join_target(target),
            api_key=api_key,
            tls=tls,
            root_certificates=read_pem(root_certificates, "root certificate"),
            client_certificate=read_pem(client_certificate, "client certificate"),
            client_key=read_pem(client_key, "client key"),
            tls_server_name=tls_server_name,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
            retries=retries,
            load_balancing=load_balancing,
        )
        self._channel_options = tuple(channel_options)
        self._connect()

    def _connect(self) -> None:
        """Open the channel and the stub (sync or asyncio, per subclass)."""
        raise NotImplementedError
