"""Who is calling: the tenant of the call's API key, and whether the key may manage.

``ApiKeyInterceptor`` sets the principal for the handler's task; the service reads it with
``current_principal()`` (worker threads started by ``asyncio.to_thread`` inherit it, as they
inherit every context variable). Without keys, every call is the one default tenant's, which may
do everything.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from textinv.errors import PermissionDeniedError
from textinv_server.store import DEFAULT_TENANT


@dataclass(frozen=True)
class Principal:
    tenant: str = DEFAULT_TENANT
    # False for a generate-only key: it may generate and read, but not register, delete, or
    # create and cancel jobs.
    may_manage: bool = True


DEFAULT_PRINCIPAL = Principal()  # no keys configured: one tenant that may do everything
_CURRENT: ContextVar[Principal] = ContextVar("textinv_principal", default=DEFAULT_PRINCIPAL)


def current_principal() -> Principal:
    return _CURRENT.get()


def set_principal(principal: Principal) -> None:
    """For the interceptor: the principal of the call running in this task."""
    _CURRENT.set(principal)


def managing_tenant(action: str) -> str:
    """The caller's tenant, once it is known that its key may ``action`` (e.g. 'register
    concepts'); ``PermissionDeniedError`` for a generate-only key."""
    principal = current_principal()
    if not principal.may_manage:
        raise PermissionDeniedError(f"this API key may only generate; it may not {action}")
    return principal.tenant
