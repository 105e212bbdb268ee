"""PostgreSQL for tests: a fresh database per test on a real server, dropped after.

``$TEXTINV_TEST_POSTGRES`` is an admin URL (a role that may create databases); the default is
the role that ``.ci/run`` creates. When no server answers there, the tests that need one skip
with the reason, except under CI (``CI=true``), where they fail: CI must run them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    import psycopg

ADMIN_ENV = "TEXTINV_TEST_POSTGRES"
DEFAULT_ADMIN_URL = "postgresql://textinv:textinv@127.0.0.1:5432/postgres"


def admin_url() -> str:
    return os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_URL


def database_url(url: str, name: str) -> str:
    """``url`` with its database replaced by ``name`` (user, password and host kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def unavailable(reason: str) -> None:
    message = f"PostgreSQL is not available for tests ({ADMIN_ENV}): {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def pg_admin() -> Iterator[psycopg.Connection]:
    """An autocommit connection to the admin database (to create, drop or inspect)."""
    try:
        import psycopg
    except ImportError as error:
        unavailable(f"psycopg is not installed ({error})")
        raise
    try:
        conn = psycopg.connect(admin_url(), autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        password = urlsplit(admin_url()).password or ""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
        unavailable(reason.replace(password, "***") if password else reason)
        raise
    with conn:
        yield conn


@pytest.fixture
def pg_url(pg_admin: psycopg.Connection) -> Iterator[str]:
    """The URL of a new, empty database (``textinv_test_<hex>``), dropped after the test."""
    from psycopg import sql

    name = f"textinv_test_{uuid.uuid4().hex}"
    pg_admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url(admin_url(), name)
    finally:
        # FORCE: connections a failed test left open (a pool, a listener) must not keep it.
        pg_admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
