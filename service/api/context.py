"""The authenticated tenant of the call in progress."""

from __future__ import annotations

import contextvars

__all__ = ["current_tenant", "tenant"]

current_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("loom_tenant")


def tenant() -> str:
    """The tenant the interceptor authenticated for this call.

    Raises:
        LookupError: called outside an authenticated call (a wiring bug).
    """
    return current_tenant.get()
