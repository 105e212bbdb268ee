"""The shared store: every piece of state in PostgreSQL, for any number of replicas and workers.

Concept files (kilobytes) live in ``concept_files``, content-addressed and shared by tenants, and
go when no concept names them; jobs' files (uploads, checkpoints, log) in ``job_files``
(``store_postgres_files``). Each write is one transaction on a pooled connection; the rules that
must hold across replicas are checked inside it, behind a lock: a tenant's concept writes all
lock its ``tenants`` row first (which also holds its concept count, so the limit is O(1)), job
creation takes an advisory lock, and ``claim_job`` locks the row it takes (``SKIP LOCKED``, so
claimers never wait on each other's rows). Leases use the database's clock, never a replica's.

Every change is announced with ``pg_notify`` in its transaction (``store_postgres_listen``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from textinv.concept_table import fold
from textinv.errors import ConceptFileError
from textinv_client.choices import JobState
from textinv_server.store import (
    CANCEL_HINT,
    QUEUED_HINT,
    ConceptRow,
    JobRow,
    Listener,
    StoreEvent,
    duplicate_concept_error,
    job_capacity_error,
    too_many_concepts_error,
)
from textinv_server.store_postgres_files import PostgresJobFiles
from textinv_server.store_postgres_listen import (
    CHANNEL,
    CONNECT_TIMEOUT_S,
    ChangeListener,
    event_payload,
    is_connection_error,
    unavailable,
)
from textinv_server.store_postgres_schema import (
    add_to_count,
    concept_from,
    drop_unused_file,
    insert,
    job_columns,
    lock_tenant,
    migrate,
)
from textinv_server.store_rows import (
    check_can_put,
    concept_values,
    job_from_mapping,
    updatable_job_columns,
)

log = logging.getLogger(__name__)

POOL_SIZE = (1, 8)
POOL_TIMEOUT_S = 10.0  # waiting for a free connection, or for the first one at start
# Serializes job creation across replicas, so that the capacity checks count every job.
ADD_JOB_LOCK = 0x74657874696E77
NOW = "extract(epoch from clock_timestamp())::float8"  # the database's clock, unix seconds
_CLAIMABLE = f"state = 'queued' OR (state = 'running' AND COALESCE(lease_expires_at, 0) < {NOW})"


class PostgresStore:
    """The ``Store`` on PostgreSQL; thread-safe (a pool of connections); see the module."""

    kind = "postgresql"
    shared = True

    def __init__(self, url: str, scratch: Path) -> None:
        self._url = url
        self._listeners: list[Listener] = []
        self._pool: ConnectionPool | None = None
        self._listener: ChangeListener | None = None
        try:
            # One direct connection first: a refusal fails at once, with libpq's reason (the
            # pool would retry until its timeout), and the schema is ready before anything runs.
            with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                migrate(conn)
            self._pool = ConnectionPool(
                url,
                min_size=POOL_SIZE[0],
                max_size=POOL_SIZE[1],
                kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
                timeout=POOL_TIMEOUT_S,
                # One round trip per checkout: a connection that a PostgreSQL restart broke is
                # replaced before a call uses it, instead of failing that call.
                check=ConnectionPool.check_connection,
                open=False,
                name="textinv-store",
            )
            self._pool.open(wait=True, timeout=POOL_TIMEOUT_S)
            self._listener = ChangeListener(url, lambda: self._listeners)
            if not self._listener.wait_listening(POOL_TIMEOUT_S):
                raise unavailable(TimeoutError("the change listener did not connect"), url)
        except psycopg.Error as error:
            self.close()
            raise unavailable(error, url) from None
        except BaseException:
            self.close()
            raise
        self.files = PostgresJobFiles(self._transaction, scratch)

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._pool is not None:
            self._pool.close()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    @property
    def listener_pid(self) -> int:
        """The backend process of the listening connection (0 while it reconnects)."""
        return self._listener.backend_pid if self._listener is not None else 0

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction: committed on success, else rolled back.
        A lost or refused connection is a ``StoreUnavailableError``."""
        assert self._pool is not None, "the store is open"
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as error:
            if is_connection_error(error):
                raise unavailable(error, self._url) from None
            raise

    def _read(self, query: Any, values: Any = ()) -> list[dict[str, Any]]:
        with self._transaction() as conn:
            return conn.cursor(row_factory=dict_row).execute(query, values).fetchall()

    @staticmethod
    def _announce(conn: psycopg.Connection, event: StoreEvent) -> None:
        """Queue ``event``: PostgreSQL sends it when (and only if) the transaction commits."""
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, event_payload(event)))

    # --- concepts ---------------------------------------------------------------------------

    def put_concept(
        self, row: ConceptRow, data: bytes, *, replace: bool, max_concepts: int
    ) -> ConceptRow | None:
        key = fold(row.token)
        try:
            with self._transaction() as conn:
                count = lock_tenant(conn, row.tenant)
                found = _concepts(conn, "tenant = %s AND fold = %s", (row.tenant, key))
                previous = check_can_put(row, found, replace)
                if previous is None and count >= max_concepts:
                    raise too_many_concepts_error(max_concepts)
                conn.execute(
                    "INSERT INTO concept_files (sha256, data) VALUES (%s, %s) "
                    "ON CONFLICT (sha256) DO NOTHING",
                    (row.sha256, data),
                )
                values = concept_values(row)
                if previous is not None:
                    conn.execute(
                        "DELETE FROM concepts WHERE tenant = %s AND token = %s",
                        (row.tenant, row.token),
                    )
                insert(conn, "concepts", values)
                if previous is None:
                    add_to_count(conn, row.tenant, 1)
                elif previous.sha256 != row.sha256:
                    drop_unused_file(conn, previous.sha256)
                self._announce(conn, StoreEvent("concept", tenant=row.tenant, key=key))
        except psycopg.errors.UniqueViolation:
            # The tenant's lock makes racing writes queue and see each other; this is a backstop.
            raise duplicate_concept_error(row.token) from None
        return previous

    def delete_concept(self, tenant: str, token: str) -> ConceptRow | None:
        with self._transaction() as conn:
            lock_tenant(conn, tenant)
            found = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    "DELETE FROM concepts WHERE tenant = %s AND token = %s RETURNING *",
                    (tenant, token),
                )
                .fetchone()
            )
            if found is None:
                return None
            row = concept_from(found)
            add_to_count(conn, tenant, -1)
            drop_unused_file(conn, row.sha256)
            self._announce(conn, StoreEvent("concept", tenant=tenant, key=fold(token)))
        return row

    def get_concept(self, tenant: str, token: str) -> ConceptRow | None:
        with self._transaction() as conn:
            found = _concepts(conn, "tenant = %s AND token = %s", (tenant, token))
        return found[0] if found else None

    def find_concepts(self, tenant: str, keys: Collection[str]) -> list[ConceptRow]:
        if not keys:
            return []
        with self._transaction() as conn:
            return _concepts(conn, "tenant = %s AND fold = ANY(%s)", (tenant, list(keys)))

    def concept_data(self, row: ConceptRow) -> bytes:
        found = self._read("SELECT data FROM concept_files WHERE sha256 = %s", (row.sha256,))
        if not found:
            raise ConceptFileError(f"{row.sha256}.safetensors: not in the store")
        return bytes(found[0]["data"])

    def list_concepts(self, tenant: str, after: str = "", limit: int = -1) -> list[ConceptRow]:
        with self._transaction() as conn:
            return _concepts(
                conn, "tenant = %s AND token > %s", (tenant, after), None if limit < 0 else limit
            )

    def count_concepts(self, tenant: str) -> int:
        found = self._read("SELECT concept_count FROM tenants WHERE tenant = %s", (tenant,))
        return int(found[0]["concept_count"]) if found else 0

    def damaged_concepts(self) -> list[tuple[ConceptRow, str]]:
        # The foreign key keeps every concept's file, and nothing changes rows behind our back.
        return []

    # --- jobs -------------------------------------------------------------------------------

    def add_job_allowed(self, *, max_queued: int, max_stored: int) -> None:
        with self._transaction() as conn:
            _check_job_capacity(conn, max_queued, max_stored)

    def add_job(self, row: JobRow, *, max_queued: int, max_stored: int) -> JobRow:
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADD_JOB_LOCK,))
            earlier = _job_by_request(conn, row.tenant, row.request_id)
            if earlier is not None:
                return earlier
            _check_job_capacity(conn, max_queued, max_stored)
            insert(conn, "jobs", job_columns(asdict(row)))
            self._announce(conn, StoreEvent("job", key=QUEUED_HINT, job_id=row.job_id))
        return row

    def find_job_by_request(self, tenant: str, request_id: str) -> JobRow | None:
        with self._transaction() as conn:
            return _job_by_request(conn, tenant, request_id)

    def put_job(self, row: JobRow) -> None:
        values = job_columns(asdict(row))
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name)) for name in values
        )
        with self._transaction() as conn:
            insert(conn, "jobs", values, sql.SQL(" ON CONFLICT (job_id) DO UPDATE SET ") + updates)
            self._announce(conn, StoreEvent("job", job_id=row.job_id))

    def update_job(self, job_id: str, holder: str | None = None, **changes: Any) -> JobRow | None:
        values = job_columns(updatable_job_columns(changes))
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder()) for name in values
        )
        held = sql.SQL("" if holder is None else " AND worker = %s AND state = 'running'")
        query = sql.SQL("UPDATE jobs SET {} WHERE job_id = %s{} RETURNING *").format(
            assignments, held
        )
        where = (job_id,) if holder is None else (job_id, holder)
        hint = CANCEL_HINT if changes.get("cancel_requested") else ""
        return self._change_job(job_id, query, (*values.values(), *where), hint=hint)

    def get_job(self, job_id: str) -> JobRow | None:
        found = self._read("SELECT * FROM jobs WHERE job_id = %s", (job_id,))
        return job_from_mapping(found[0]) if found else None

    def list_jobs(
        self, states: tuple[JobState, ...] = (), tenant: str | None = None
    ) -> list[JobRow]:
        rows = self._read(
            "SELECT * FROM jobs WHERE (%(any_state)s OR state = ANY(%(states)s)) "
            "AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) "
            "ORDER BY created_at DESC, job_id",
            {
                "any_state": not states,
                "states": [state.value for state in states],
                "tenant": tenant,
            },
        )
        return [job_from_mapping(row) for row in rows]

    def job_ids(self) -> set[str]:
        return {row["job_id"] for row in self._read("SELECT job_id FROM jobs")}

    def count_jobs(self) -> dict[JobState, int]:
        counts = dict.fromkeys(JobState, 0)
        for row in self._read("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state"):
            counts[JobState(row["state"])] = int(row["n"])
        return counts

    def finished_before(self, finished_at: float) -> list[JobRow]:
        rows = self._read(
            "SELECT * FROM jobs WHERE purged_at IS NULL AND finished_at IS NOT NULL "
            "AND finished_at < %s ORDER BY finished_at",
            (finished_at,),
        )
        return [job_from_mapping(row) for row in rows]

    # --- leases -----------------------------------------------------------------------------

    def claim_job(self, worker: str, lease_s: float) -> JobRow | None:
        # SKIP LOCKED: a row another claimer holds is passed over, and one that it took in the
        # meantime fails the re-checked condition, so two claims never return the same job.
        query = (
            f"WITH next AS (SELECT job_id FROM jobs WHERE {_CLAIMABLE} "
            "ORDER BY created_at, job_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"UPDATE jobs SET state = 'running', worker = %s, lease_expires_at = {NOW} + %s, "
            f"attempts = attempts + 1, started_at = COALESCE(started_at, {NOW}) "
            "FROM next WHERE jobs.job_id = next.job_id RETURNING jobs.*"
        )
        return self._change_job(None, query, (worker, lease_s))

    def renew_lease(self, job_id: str, worker: str, lease_s: float) -> JobRow | None:
        query = (
            f"UPDATE jobs SET lease_expires_at = {NOW} + %s "
            "WHERE job_id = %s AND worker = %s AND state = 'running' RETURNING *"
        )
        return self._change_job(job_id, query, (lease_s, job_id, worker), announce=False)

    def release_job(self, job_id: str, worker: str) -> JobRow | None:
        query = (
            "UPDATE jobs SET state = 'queued', worker = '', lease_expires_at = NULL, "
            "attempts = GREATEST(0, attempts - 1) "
            "WHERE job_id = %s AND worker = %s AND state = 'running' RETURNING *"
        )
        return self._change_job(job_id, query, (job_id, worker), hint=QUEUED_HINT)

    def _change_job(
        self,
        job_id: str | None,
        query: Any,
        values: Any,
        *,
        announce: bool = True,
        hint: str = "",
    ) -> JobRow | None:
        """Run an ``UPDATE … RETURNING *`` on jobs; the row after it, ``None`` if none changed."""
        with self._transaction() as conn:
            found = conn.cursor(row_factory=dict_row).execute(query, values).fetchone()
            if found is None:
                return None
            if announce:
                self._announce(conn, StoreEvent("job", key=hint, job_id=found["job_id"]))
        return job_from_mapping(found)


def _concepts(
    conn: psycopg.Connection, where: str, values: tuple[Any, ...], limit: int | None = None
) -> list[ConceptRow]:
    """The concepts matching ``where`` (a literal condition), by token; ``LIMIT NULL``: all."""
    query = f"SELECT * FROM concepts WHERE {where} ORDER BY token LIMIT %s"
    rows = conn.cursor(row_factory=dict_row).execute(query, (*values, limit)).fetchall()
    return [concept_from(row) for row in rows]


def _check_job_capacity(conn: psycopg.Connection, max_queued: int, max_stored: int) -> None:
    found = conn.execute(  # two counts, each over its own index
        "SELECT (SELECT COUNT(*) FROM jobs WHERE state = 'queued'), "
        "(SELECT COUNT(*) FROM jobs WHERE purged_at IS NULL)"
    ).fetchone()
    queued, stored = found if found else (0, 0)
    job_capacity_error(int(queued), int(stored), max_queued, max_stored)


def _job_by_request(conn: psycopg.Connection, tenant: str, request_id: str) -> JobRow | None:
    if not request_id:
        return None
    found = (
        conn.cursor(row_factory=dict_row)
        .execute("SELECT * FROM jobs WHERE tenant = %s AND request_id = %s", (tenant, request_id))
        .fetchone()
    )
    return None if found is None else job_from_mapping(found)
