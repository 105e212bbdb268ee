"""Connection settings shared by the sync and async clients: TLS, API key, deadlines, sizes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

# gRPC refuses messages over 4 MiB by default; training images, concept files and batches of PNGs
# are larger than that. The server's own limit is reported by GetServerInfo.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Generous, because one generation on a CPU with a real model takes tens of seconds.
DEFAULT_TIMEOUT_S = 120.0

PemSource = bytes | str | os.PathLike[str]
ChannelOptions = Sequence[tuple[str, Any]]


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

    def __post_init__(self) -> None:
        if not self.target or self.target != self.target.strip():
            raise ValueError(f"target must be HOST:PORT, got {self.target!r}")
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

    def channel_options(self, extra: ChannelOptions = ()) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        if self.tls_server_name:
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options + list(extra)

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
    if settings.uses_tls:
        return grpc.secure_channel(settings.target, settings.credentials(), options=options)
    return grpc.insecure_channel(settings.target, options=options)


def open_async_channel(
    settings: ConnectionSettings, extra: ChannelOptions = ()
) -> grpc.aio.Channel:
    options = settings.channel_options(extra)
    if settings.uses_tls:
        return grpc.aio.secure_channel(settings.target, settings.credentials(), options=options)
    return grpc.aio.insecure_channel(settings.target, options=options)


class ClientBase:
    """Constructor shared by the sync and async clients; subclasses open their own channel."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: PemSource | None = None,
        client_certificate: PemSource | None = None,
        client_key: PemSource | None = None,
        tls_server_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: ChannelOptions = (),
    ) -> None:
        """Connect to a textinv server at ``target`` (HOST:PORT).

        ``api_key`` is sent as ``authorization: Bearer KEY``. TLS is used when ``tls`` is set or
        any certificate is given; certificates are PEM bytes or paths to PEM files, and a client
        certificate plus key turn on mutual TLS. ``timeout`` is each call's default deadline in
        seconds (None: no deadline). ``max_message_bytes`` caps messages both ways (64 MiB by
        default instead of gRPC's 4 MiB).
        """
        self.settings = ConnectionSettings(
            target=target,
            api_key=api_key,
            tls=tls,
            root_certificates=read_pem(root_certificates, "root certificate"),
            client_certificate=read_pem(client_certificate, "client certificate"),
            client_key=read_pem(client_key, "client key"),
            tls_server_name=tls_server_name,
            timeout=timeout,
            max_message_bytes=max_message_bytes,
        )
        self._channel_options = tuple(channel_options)
        self._connect()

    def _connect(self) -> None:
        """Open the channel and the stub (sync or asyncio, per subclass)."""
        raise NotImplementedError
