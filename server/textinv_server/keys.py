"""API keys with tenants and roles: the key file, and the plain keys of ``--api-key``.

A key file is JSON, and holds only each key's SHA-256, never the key itself::

    {"keys": [{"sha256": "<64 hex digits>", "tenant": "acme", "role": "manage", "name": "ci"}]}

``role`` is ``manage`` (register and delete concepts, create and cancel jobs, and generate) or
``generate`` (generate and read only); ``name`` is an optional label for people. ``textinv keys
add`` makes a key and appends its hash (``keys_command``). Plain ``--api-key`` keys are keys of
the default tenant that may manage, hashed in memory at start, so the interceptor compares one
kind of thing. Errors name the file, the entry's number and the field, never a value: a key
pasted into the wrong field must not end up in a log.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textinv.errors import InvalidInputError
from textinv_server.store import DEFAULT_TENANT

ROLES = ("manage", "generate")
MANAGE, GENERATE = ROLES
MAX_KEY_FILE_BYTES = 1 << 20  # a key file of 1 MiB holds about 8000 keys
MAX_NAME_CHARS = 128
TENANT_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")
REQUIRED_FIELDS = ("sha256", "tenant", "role")
FIELDS = (*REQUIRED_FIELDS, "name")


@dataclass(frozen=True)
class KeyEntry:
    """One accepted key: its SHA-256 (lowercase hex), its tenant and role, and a label."""

    sha256: str
    tenant: str
    role: str = MANAGE
    name: str = ""

    @property
    def may_manage(self) -> bool:
        return self.role == MANAGE

    def as_json(self) -> dict[str, str]:
        entry = {"sha256": self.sha256, "tenant": self.tenant, "role": self.role}
        return {**entry, "name": self.name} if self.name else entry


def hash_key(key: str) -> str:
    """The SHA-256 of ``key`` (UTF-8), as the key file stores it: 64 lowercase hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def plain_key_entries(keys: Iterable[str]) -> tuple[KeyEntry, ...]:
    """``--api-key`` keys: the default tenant's, and they may manage."""
    return tuple(KeyEntry(hash_key(key), DEFAULT_TENANT, MANAGE) for key in keys)


def check_tenant(tenant: str) -> str:
    """``tenant`` if it is 1-64 characters of letters, digits, ``.``, ``_`` and ``-``."""
    if not TENANT_PATTERN.fullmatch(tenant):
        raise InvalidInputError("a tenant is 1-64 characters of letters, digits, '.', '_' and '-'")
    return tenant


def load_key_file(path: Path) -> tuple[KeyEntry, ...]:
    """The entries of the key file at ``path``; ``InvalidInputError`` says what is wrong, where."""
    document = _read_json(Path(path))
    if not isinstance(document, dict) or set(document) != {"keys"}:
        raise InvalidInputError(f'key file {path}: expected {{"keys": [...]}} and nothing else')
    items = document["keys"]
    if not isinstance(items, list):
        raise InvalidInputError(f'key file {path}: "keys" must be a list of entries')
    entries = tuple(_entry(item, f"key file {path}: entry #{n}") for n, item in enumerate(items, 1))
    check_unique(entries, f"key file {path}")
    return entries


def check_unique(entries: Sequence[KeyEntry], where: str) -> None:
    """Refuse one key twice: its tenant (or role) would be whichever entry the lookup met."""
    first: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        if entry.sha256 in first:
            raise InvalidInputError(
                f"{where}: entry #{number}: sha256 repeats entry #{first[entry.sha256]}'s; "
                "each key may appear once"
            )
        first[entry.sha256] = number


def key_file_text(entries: Sequence[KeyEntry]) -> str:
    """The key file that holds ``entries``, one entry a line so that diffs stay readable."""
    lines = ",\n".join("    " + json.dumps(entry.as_json()) for entry in entries)
    return '{"keys": [\n' + lines + "\n]}\n" if entries else '{"keys": []}\n'


def _read_json(path: Path) -> Any:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_KEY_FILE_BYTES + 1)  # bounded: never read a huge file whole
    except OSError as error:
        raise InvalidInputError(f"cannot read key file {path}: {error.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise InvalidInputError(f"key file {path} is over {MAX_KEY_FILE_BYTES} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidInputError(f"key file {path} is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        # The decoder's message gives a position, never the text around it.
        raise InvalidInputError(f"key file {path} is not valid JSON: {error}") from None


def _entry(item: Any, where: str) -> KeyEntry:
    if not isinstance(item, dict):
        raise InvalidInputError(f"{where}: expected an object with {', '.join(REQUIRED_FIELDS)}")
    unknown = sorted(str(name) for name in item if name not in FIELDS)
    if unknown:
        # Field names are the file's structure, not secrets: naming them finds a typo.
        raise InvalidInputError(
            f"{where}: unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})"
        )
    for name in REQUIRED_FIELDS:
        if name not in item:
            raise InvalidInputError(f"{where}: missing field {name!r}")
        if not isinstance(item[name], str):
            raise InvalidInputError(f"{where}: field {name!r} must be a string")
    if not SHA256_PATTERN.fullmatch(item["sha256"]):
        raise InvalidInputError(
            f"{where}: field 'sha256' must be 64 hex digits, the SHA-256 of the key "
            "(the file never holds a key itself; `textinv keys add` writes entries)"
        )
    try:
        check_tenant(item["tenant"])
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: field 'tenant': {error}") from None
    if item["role"] not in ROLES:
        raise InvalidInputError(f"{where}: field 'role' must be one of {', '.join(ROLES)}")
    name = item.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInputError(
            f"{where}: field 'name' must be printable text of at most {MAX_NAME_CHARS} characters"
        )
    return KeyEntry(item["sha256"].lower(), item["tenant"], item["role"], name)
