"""A job's token: whether a new job may learn it (not while a concept or another job of the same
tenant holds it), and registering what a job learned (never over someone else's concept)."""

from __future__ import annotations

from textinv.concept_table import fold
from textinv.concepts import Concept
from textinv.errors import AlreadyExistsError, InvalidInputError, NotFoundError, quote
from textinv_client.choices import JobState
from textinv_server.registry import ConceptRegistry
from textinv_server.store import Store


def check_token_is_free(token: str, registry: ConceptRegistry, store: Store, tenant: str) -> None:
    """Refuse ``token`` (already normalized) when a prompt could not tell it apart from one of
    the tenant's concepts (another case or Unicode form counts) or queued or running jobs."""
    registered = registry.find(tenant, token)
    if registered is not None:
        raise InvalidInputError(
            f"token {quote(token)} is registered already (as {quote(registered)}); "
            "delete it or choose another"
        )
    pending = store.list_jobs((JobState.QUEUED, JobState.RUNNING), tenant)
    if any(fold(str(row.params.get("token", ""))) == fold(token) for row in pending):
        raise InvalidInputError(
            f"token {quote(token)} is being learned by another job; wait or choose another"
        )


def register_learned(registry: ConceptRegistry, concept: Concept, job_id: str, tenant: str) -> str:
    """Register a job's learned concept for its tenant; the token it got. Never over a concept
    that someone else registered meanwhile (a row of this very job, from a run that crashed after
    registering, is replaced)."""
    try:
        current = registry.get(tenant, concept.token)
    except NotFoundError:
        current = None
    ours = current is not None and current.job_id == job_id
    try:
        if current is not None and not ours:
            raise AlreadyExistsError("")
        registered = registry.register_concept(concept, tenant=tenant, job_id=job_id, replace=ours)
    except AlreadyExistsError:
        raise AlreadyExistsError(
            f"token {concept.token!r} was registered by someone else while the job ran, "
            "and was left as it is; the learned concept is kept with the job (GetJob with "
            "include_file): register it under another token"
        ) from None
    return registered.token
