"""The PostgreSQL store's plumbing: its connection pool's errors, and the change listener.

Every committed change is announced with ``pg_notify(CHANNEL, json)`` inside its transaction
(PostgreSQL delivers it at commit, and never for a rolled-back one). ``ChangeListener`` owns one
autocommit connection that ``LISTEN``s on the channel and hands each notification, as a
``StoreEvent``, to the subscribed listeners; the process's own changes reach them the same way.
When that connection drops, notifications sent meanwhile are lost: it reconnects with backoff and
then delivers ``StoreEvent("reset")``, so that caches drop everything.

Errors never carry the store's URL or its password: a connection failure becomes a
``StoreUnavailableError`` naming the host and the database only.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from textinv.errors import StoreUnavailableError
from textinv_server.store import Listener, StoreEvent

log = logging.getLogger(__name__)

CHANNEL = "textinv"
CONNECT_TIMEOUT_S = 5
POLL_S = 0.25  # how long the listener waits for a notification before checking for close()
BACKOFF_S = (0.1, 5.0)  # the first and the longest wait between reconnection attempts
_EVENT_FIELDS = {field.name for field in fields(StoreEvent)}


def event_payload(event: StoreEvent) -> str:
    """``event`` as the JSON text of a notification (kilobytes below the 8000-byte limit)."""
    return json.dumps({name: value for name, value in asdict(event).items() if value})


def parse_event(payload: str) -> StoreEvent | None:
    try:
        values = json.loads(payload)
        return StoreEvent(**{k: str(v) for k, v in values.items() if k in _EVENT_FIELDS})
    except (ValueError, TypeError, AttributeError):
        log.warning("ignored a malformed store notification")
        return None


def describe(url: str) -> str:
    """The store as messages name it: host, port and database, never the user or password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "PostgreSQL"
    host = info.get("host") or "localhost"
    return f"PostgreSQL at {host}:{info.get('port') or 5432}/{info.get('dbname') or ''}"


def redact(text: str, url: str) -> str:
    """``text`` with the URL and its password masked, should a driver message quote them (the
    password as written in the URL, decoded, or as libpq parsed it; a malformed URL included)."""
    secrets = {url}
    try:
        raw = urlsplit(url).password or ""
        secrets |= {raw, unquote(raw)}
        secrets.add(str(conninfo_to_dict(url).get("password") or ""))
    except (ValueError, psycopg.Error):
        pass
    for secret in sorted(filter(None, secrets), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def unavailable(error: BaseException, url: str) -> StoreUnavailableError:
    lines = str(error).strip().splitlines()
    reason = redact(lines[0] if lines else type(error).__name__, url)
    return StoreUnavailableError(f"{describe(url)} cannot be reached: {reason}")


def is_connection_error(error: BaseException) -> bool:
    """A lost or refused connection (or the pool out of them), not a conflict worth retrying."""
    return isinstance(error, psycopg.OperationalError) and not isinstance(
        error, psycopg.errors.TransactionRollback
    )


# A listening connection only receives, so a dead peer (a lost node, a silent network partition)
# would go unnoticed for ever: TCP keepalives find it within about 10 s, and the reconnect that
# follows delivers a reset. libpq's own names; on a Unix socket they are ignored.
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


class ChangeListener:
    """A thread that delivers the channel's notifications to ``listeners``; see the module."""

    def __init__(self, url: str, listeners: Callable[[], list[Listener]]) -> None:
        self._url = url
        self._listeners = listeners
        self._closed = threading.Event()
        self._listening = threading.Event()
        self.backend_pid = 0  # of the listening connection, while there is one
        self._thread = threading.Thread(target=self._run, name="store-listener", daemon=True)
        self._thread.start()

    def wait_listening(self, timeout: float) -> bool:
        return self._listening.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=POLL_S + CONNECT_TIMEOUT_S + 1)

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        connected_before = False
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, **KEEPALIVE
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    self._listening.set()
                    backoff = BACKOFF_S[0]
                    if connected_before:  # what was sent while disconnected is lost
                        self._deliver(StoreEvent("reset"))
                    connected_before = True
                    self._receive(conn)
            except psycopg.Error as error:
                self._listening.clear()
                if self._closed.is_set():
                    break
                log.warning("store listener: %s; reconnecting", unavailable(error, self._url))
                self._closed.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])

    def _receive(self, conn: psycopg.Connection) -> None:
        while not self._closed.is_set():
            for notify in conn.notifies(timeout=POLL_S):
                event = parse_event(notify.payload)
                if event is not None:
                    self._deliver(event)

    def _deliver(self, event: StoreEvent) -> None:
        for listener in list(self._listeners()):
            try:
                listener(event)
            except Exception:  # one listener's bug must not silence the others
                log.exception("a store listener failed on %s", event)
