"""Rows as both stores write and read them: the conversions, written once.

A ``JobRow`` is stored with its params and progress as JSON text, its flags as integers and its
state by name; a ``ConceptRow`` with its folded token (``fold``), the key by which prompts find it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import Any

from textinv.concept_table import fold
from textinv_client.choices import JobState
from textinv_server.store import (
    ConceptRow,
    JobRow,
    duplicate_concept_error,
    look_alike_error,
)

JOB_FLAGS = ("skip_register", "cancel_requested", "concept_ready")
JOB_JSON = ("params", "progress")


def concept_values(row: ConceptRow) -> dict[str, Any]:
    """The concept's columns, ``fold`` included."""
    return asdict(row) | {"fold": fold(row.token)}


def check_can_put(row: ConceptRow, found: list[ConceptRow], replace: bool) -> ConceptRow | None:
    """The row that ``row`` replaces (same token), if any, among ``found`` (the tenant's rows of
    the same fold); refuses a duplicate without ``replace``, and any look-alike."""
    previous = None
    for other in found:
        if other.token != row.token:
            raise look_alike_error(row.token, other.token)
        previous = other
    if previous is not None and not replace:
        raise duplicate_concept_error(row.token)
    return previous


def updatable_job_columns(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` itself, once every name is a job column other than the id."""
    unknown = set(changes) - ({f.name for f in fields(JobRow)} - {"job_id"})
    if unknown:
        raise ValueError(f"not updatable job columns: {sorted(unknown)}")
    return changes


def job_values(values: dict[str, Any]) -> dict[str, Any]:
    """``JobRow`` values as stored: JSON params and progress, int flags, state names."""
    stored = dict(values)
    for name in JOB_JSON:
        if name in stored and stored[name] is not None:
            stored[name] = json.dumps(stored[name], sort_keys=True)
    for name in JOB_FLAGS:
        if name in stored:
            stored[name] = int(stored[name])
    if "state" in stored:
        stored["state"] = JobState(stored["state"]).value
    return stored


def job_from_mapping(values: dict[str, Any]) -> JobRow:
    """A stored row (as a column → value mapping) as a ``JobRow``."""
    values = dict(values)
    for name in JOB_JSON:
        if isinstance(values.get(name), str):
            values[name] = json.loads(values[name])
    for name in JOB_FLAGS:
        values[name] = bool(values[name])
    values["state"] = JobState(values["state"])
    return JobRow(**values)
