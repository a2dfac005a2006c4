"""The authenticated caller and tenant of the call in progress."""

from __future__ import annotations

import contextvars

from service.core.keys import Caller

__all__ = ["current_caller", "current_tenant", "tenant"]

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("loom_tenant")
current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("loom_caller")


def tenant() -> str:
    """The tenant the interceptor authenticated for this call.

    Raises:
        LookupError: called outside an authenticated call (a wiring bug).
    """
    return current_tenant.get()
