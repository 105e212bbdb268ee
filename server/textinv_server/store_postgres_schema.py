"""The PostgreSQL store's schema: versioned migrations that every replica runs on start, and
rows as its tables hold them (jsonb params and progress, booleans, the folded token).

Each step runs once per database: ``schema_migrations`` records the versions applied, and the
whole run is one transaction holding ``pg_advisory_xact_lock(MIGRATION_LOCK)``, so replicas that
start at once queue behind the first, which applies the steps while the others wait and then find
nothing left to do. A failed step rolls back with the run, leaving the database as it was.

Steps are only ever appended: a released step is never edited, since databases have applied it.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from textinv_client.choices import JobState
from textinv_server.store import (
    ConceptRow,
)
from textinv_server.store_rows import JOB_JSON

log = logging.getLogger(__name__)

# The advisory lock that serializes migrations: a fixed 64-bit key ("textinv" in ASCII), held
# until the migration transaction ends, the connection's death included.
MIGRATION_LOCK = 0x74657874696E76
_NOTHING = sql.SQL("")

_V1 = """
CREATE TABLE concept_files (
    sha256 text PRIMARY KEY,
    data bytea NOT NULL
);
CREATE TABLE concepts (
    tenant text NOT NULL,
    token text NOT NULL,
    fold text NOT NULL,
    sha256 text NOT NULL REFERENCES concept_files (sha256),
    num_vectors integer NOT NULL,
    width integer NOT NULL,
    source_format text NOT NULL,
    size_bytes bigint NOT NULL,
    created_at double precision NOT NULL,
    job_id text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, token),
    UNIQUE (tenant, fold)
);
CREATE INDEX concepts_by_sha256 ON concepts (sha256);
-- One row per tenant with a concept: the count that max_concepts is checked against (O(1)), and
-- the row every concept write of the tenant locks first, so that those writes queue.
CREATE TABLE tenants (
    tenant text PRIMARY KEY,
    concept_count integer NOT NULL DEFAULT 0 CHECK (concept_count >= 0)
);
CREATE TABLE jobs (
    job_id text PRIMARY KEY,
    state text NOT NULL,
    params jsonb NOT NULL,
    num_images integer NOT NULL,
    skip_register boolean NOT NULL,
    total_steps integer NOT NULL,
    created_at double precision NOT NULL,
    step integer NOT NULL DEFAULT 0,
    loss double precision,
    started_at double precision,
    finished_at double precision,
    error text NOT NULL DEFAULT '',
    registered_token text NOT NULL DEFAULT '',
    attempts integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    concept_ready boolean NOT NULL DEFAULT false,
    purged_at double precision,
    tenant text NOT NULL DEFAULT 'default',
    request_id text NOT NULL DEFAULT '',
    worker text NOT NULL DEFAULT '',
    lease_expires_at double precision,
    progress jsonb
);
CREATE UNIQUE INDEX jobs_by_request ON jobs (tenant, request_id) WHERE request_id <> '';
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_by_state ON jobs (state);
-- The claim query's scan: the jobs a worker may take, oldest first.
CREATE INDEX jobs_to_claim ON jobs (created_at, job_id) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_by_finished ON jobs (finished_at) WHERE purged_at IS NULL;
CREATE TABLE job_files (
    job_id text NOT NULL,
    path text NOT NULL,
    data bytea NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, path)
);
"""

# (version, SQL): appended to, never edited.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1),)


def migrate(conn: psycopg.Connection) -> list[int]:
    """Apply the steps the database lacks, in order; the versions applied (often none)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        done = []
        for version, script in MIGRATIONS:
            if version in applied:
                continue
            conn.execute(script.encode())  # several statements: no parameters, simple protocol
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            done.append(version)
    if done:
        log.info("PostgreSQL store: applied schema migrations %s", done)
    return done


# --- rows as the tables hold them ------------------------------------------------------------


def concept_from(values: dict[str, Any]) -> ConceptRow:
    values = dict(values)
    values.pop("fold", None)
    return ConceptRow(**values)


def insert(
    conn: psycopg.Connection, table: str, values: dict[str, Any], tail: sql.Composable = _NOTHING
) -> None:
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(map(sql.Identifier, values)),
        sql.SQL(", ").join(sql.Placeholder() * len(values)),
    )
    conn.execute(query + tail, tuple(values.values()))


def job_columns(values: dict[str, Any]) -> dict[str, Any]:
    """``JobRow`` values as PostgreSQL stores them: jsonb params and progress, state names."""
    stored = dict(values)
    for name in JOB_JSON:
        if name in stored and stored[name] is not None:
            stored[name] = Jsonb(stored[name])
    if "state" in stored:
        stored["state"] = JobState(stored["state"]).value
    return stored


# --- the concept tables' bookkeeping, inside a caller's transaction -----------------------


def lock_tenant(conn: psycopg.Connection, tenant: str) -> int:
    """Lock the tenant's row (created on its first concept) until commit; its concept count."""
    conn.execute("INSERT INTO tenants (tenant) VALUES (%s) ON CONFLICT DO NOTHING", (tenant,))
    found = conn.execute(
        "SELECT concept_count FROM tenants WHERE tenant = %s FOR UPDATE", (tenant,)
    ).fetchone()
    return int(found[0]) if found else 0


def add_to_count(conn: psycopg.Connection, tenant: str, change: int) -> None:
    conn.execute(
        "UPDATE tenants SET concept_count = concept_count + %s WHERE tenant = %s", (change, tenant)
    )


def drop_unused_file(conn: psycopg.Connection, sha256: str) -> None:
    """Delete the concept file unless a concept (any tenant's, committed or not) still uses it:
    the foreign key refuses the delete then, and the savepoint undoes just that refusal."""
    try:
        with conn.transaction():
            conn.execute(
                "DELETE FROM concept_files WHERE sha256 = %s AND NOT EXISTS "
                "(SELECT 1 FROM concepts WHERE sha256 = %s)",
                (sha256, sha256),
            )
    except psycopg.errors.ForeignKeyViolation:
        pass
