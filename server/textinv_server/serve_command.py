"""``textinv serve``: flags → ``ServerConfig`` → ``textinv_server.app.serve``.

Every flag is a field of ``ServerConfig``, ``BatchingConfig``, ``TlsConfig`` or ``Limits``
(``textinv_client.flags``); this module adds only what no single field says: values from the
environment too (API keys, the key file, the store; a flag wins over its variable), and the
checks that span flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from textinv.errors import InvalidInputError
from textinv_client.flags import add_flags, flag_fields, flag_name, from_flags
from textinv_server.config import BatchingConfig, Limits, ServerConfig, TlsConfig

API_KEYS_ENV = "TEXTINV_API_KEYS"
KEYS_FILE_ENV = "TEXTINV_KEYS_FILE"
STORE_ENV = "TEXTINV_STORE"
DEFAULT_STORE = "sqlite"  # ServerConfig.store's default, when neither flag nor variable says
DEFAULT_DATA_DIR = Path("textinv-data")


def add_serve_subcommand(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the gRPC server")
    # --store's default is None here, so that an unset flag lets $TEXTINV_STORE decide.
    add_flags(serve, ServerConfig, defaults={"data_dir": DEFAULT_DATA_DIR, "store": None})
    add_flags(serve, BatchingConfig)
    add_flags(serve, TlsConfig)
    add_flags(serve, Limits)
    serve.set_defaults(func=run_serve)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The configuration the flags describe; ``InvalidInputError`` names a bad flag."""
    if (args.cert is None) != (args.key is None):
        raise InvalidInputError("--tls-cert and --tls-key go together; give both or neither")
    if args.client_ca is not None and args.cert is None:
        raise InvalidInputError("--tls-client-ca needs --tls-cert and --tls-key")
    if not 0 <= args.port <= 65535:
        raise InvalidInputError(f"--port must be in 0..65535, got {args.port}")
    if not args.lease_seconds >= 1:
        raise InvalidInputError(f"--lease-seconds must be ≥ 1, got {args.lease_seconds}")
    limits = from_flags(Limits, args)
    for item, spec, _hint in flag_fields(Limits):
        value = getattr(limits, item.name)
        if value < 1:
            raise InvalidInputError(f"{flag_name(item, spec)} must be ≥ 1, got {value}")
    return from_flags(
        ServerConfig,
        args,
        api_keys=(*args.api_keys, *environment_api_keys()),
        keys_file=args.keys_file or _environment_path(KEYS_FILE_ENV),
        store=args.store or environment_value(STORE_ENV) or DEFAULT_STORE,
        tls=from_flags(TlsConfig, args) if args.cert is not None else None,
        limits=limits,
        batching=from_flags(BatchingConfig, args),
    )


def environment_api_keys() -> list[str]:
    """The keys in ``$TEXTINV_API_KEYS`` (comma-separated; empty entries skipped).

    A variable that is set but holds no key at all is refused: someone meant to require keys,
    and starting an open server instead would be the wrong way to fail."""
    value = os.environ.get(API_KEYS_ENV)
    keys = [key for key in (value or "").split(",") if key]
    if value is not None and not keys:
        raise InvalidInputError(f"${API_KEYS_ENV} is set but holds no key; unset it or give keys")
    return keys


def environment_value(name: str) -> str | None:
    """``$name``, or None when unset; set but empty is refused, as for ``$TEXTINV_API_KEYS``."""
    value = os.environ.get(name)
    if value is not None and not value.strip():
        raise InvalidInputError(f"${name} is set but empty; unset it or give a value")
    return value


def _environment_path(name: str) -> Path | None:
    value = environment_value(name)
    return None if value is None else Path(value)


def run_serve(args: argparse.Namespace) -> int:
    from textinv_server.app import serve

    config = config_from_args(args)

    def announce(port: int) -> None:
        print(f"textinv serving on {config.host}:{port}", flush=True)

    asyncio.run(serve(config, announce))
    return 0
