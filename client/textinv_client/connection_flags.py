"""The connection flags of the remote commands (``--server``, ``--api-key``, ``--tls*``,
``--timeout``, ``--no-retries``) and the client they open. The server's ``textinv generate``
declares them too.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from textinv_client.channel import DEFAULT_TIMEOUT_S
from textinv_client.checks import positive_float
from textinv_client.flags import add_flags, flag, from_flags
from textinv_client.sync_client import TextInvClient

API_KEY_ENV = "TEXTINV_API_KEY"
GROUP = "server connection"


@dataclass(frozen=True)
class ConnectionFlags:
    """Where and how a command connects. Certificates are paths here, read when connecting, so
    a missing file is one ``error:`` line rather than a usage error."""

    server: str = field(
        metadata=flag(
            "address of the textinv server; several replicas as IP:PORT,IP:PORT, or "
            "dns:///NAME:PORT for a name that resolves to all of them",
            metavar="HOST:PORT",
            group=GROUP,
        )
    )
    api_key: str | None = field(
        default=None,
        metadata=flag(
            f"API key sent as 'authorization: Bearer KEY' (default: ${API_KEY_ENV})", group=GROUP
        ),
    )
    tls: bool = field(
        default=False, metadata=flag("use TLS with the system's trusted roots", group=GROUP)
    )
    tls_ca: Path | None = field(
        default=None, metadata=flag("PEM file of the CA that signed the server", group=GROUP)
    )
    tls_cert: Path | None = field(
        default=None, metadata=flag("client certificate (PEM) for mutual TLS", group=GROUP)
    )
    tls_key: Path | None = field(
        default=None, metadata=flag("client private key (PEM) for mutual TLS", group=GROUP)
    )
    timeout: float | None = field(
        default=None,
        metadata=flag("deadline of each call, in seconds", parse=positive_float, group=GROUP),
    )
    retries: bool = field(
        default=True,
        metadata=flag(
            "do not retry idempotent calls when a server is unavailable",
            name="--no-retries",
            group=GROUP,
        ),
    )

    def client(self) -> TextInvClient:
        """A client for these settings; the API key falls back to $TEXTINV_API_KEY."""
        return TextInvClient(
            self.server,
            api_key=self.api_key or os.environ.get(API_KEY_ENV) or None,
            tls=self.tls,
            root_certificates=self.tls_ca,
            client_certificate=self.tls_cert,
            client_key=self.tls_key,
            timeout=DEFAULT_TIMEOUT_S if self.timeout is None else self.timeout,
            retries=self.retries,
        )


def add_connection_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """Declare the connection flags (``required``: is --server mandatory)."""
    if not required:
        # A group made here first is the one add_flags fills; its description shows in --help.
        parser.add_argument_group(GROUP, "omit --server to run locally")
    add_flags(parser, ConnectionFlags, required=["server"] if required else [])


def client_from_args(args: argparse.Namespace) -> TextInvClient:
    """A client for the connection flags.

    Only ``args.server`` is required, so a composed command that declares fewer of the flags
    (rather than calling :func:`add_connection_arguments`) still works.
    """
    return from_flags(ConnectionFlags, args).client()
