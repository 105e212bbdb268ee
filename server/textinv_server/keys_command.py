"""``textinv keys add|list``: make API keys for tenants, and see which a key file holds.

``add`` makes a random key, appends its SHA-256 to the key file (creating it) and prints the key
once: the file never holds it, so it cannot be shown again. The key alone goes to stdout, so that
``KEY=$(textinv keys add ...)`` captures it; what was done goes to stderr. ``list`` prints each
entry's tenant, role, name and the first 12 hex digits of its hash, enough to tell entries apart.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from textinv.errors import InvalidInputError
from textinv.fileio import atomic_write_text
from textinv_server.keys import (
    MAX_NAME_CHARS,
    ROLES,
    KeyEntry,
    check_tenant,
    check_unique,
    hash_key,
    key_file_text,
    load_key_file,
)

KEY_BYTES = 32  # 256 bits of randomness: 43 URL-safe characters
HASH_PREFIX_CHARS = 12


def add_keys_subcommand(subparsers: argparse._SubParsersAction) -> None:
    keys = subparsers.add_parser("keys", help="make API keys for tenants; list a key file")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    add = actions.add_parser("add", help="make a key, store its hash, print the key once")
    add.add_argument("--file", required=True, type=Path, help="the key file (made if missing)")
    add.add_argument("--tenant", required=True, help="the key's tenant: 1-64 of [A-Za-z0-9._-]")
    add.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="manage: concepts, jobs and generation; generate: generation and reads only",
    )
    add.add_argument("--name", default="", help="a label for people (e.g. who holds the key)")
    add.set_defaults(func=run_add)

    listing = actions.add_parser("list", help="print each key's tenant, role, name, hash prefix")
    listing.add_argument("--file", required=True, type=Path, help="the key file")
    listing.set_defaults(func=run_list)


def run_add(args: argparse.Namespace) -> int:
    path: Path = args.file
    check_tenant(args.tenant)
    if len(args.name) > MAX_NAME_CHARS or not args.name.isprintable():
        raise InvalidInputError(f"--name must be printable text of at most {MAX_NAME_CHARS} chars")
    entries = load_key_file(path) if path.exists() else ()
    key = secrets.token_urlsafe(KEY_BYTES)
    entry = KeyEntry(hash_key(key), args.tenant, args.role, args.name)
    check_unique((*entries, entry), f"key file {path}")  # 256 random bits: never in practice
    # Mode 0600: atomic_write_text writes a temporary file that mkstemp made 0600 and renames it
    # into place, so the file is never readable by others, not even for a moment.
    atomic_write_text(path, key_file_text((*entries, entry)))
    label = f" ({entry.name})" if entry.name else ""
    print(
        f"added a {entry.role} key for tenant {entry.tenant}{label} to {path} "
        f"(sha256 {entry.sha256[:HASH_PREFIX_CHARS]}…).\n"
        "The key is printed once, on stdout, and is not stored anywhere: keep it now.",
        file=sys.stderr,
    )
    print(key, flush=True)
    return 0


def run_list(args: argparse.Namespace) -> int:
    entries = load_key_file(args.file)
    rows = [("TENANT", "ROLE", "NAME", "SHA256")]
    rows += [(e.tenant, e.role, e.name or "-", e.sha256[:HASH_PREFIX_CHARS]) for e in entries]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for *cells, digest in rows:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
        print("  ".join([*padded, digest]))
    return 0
