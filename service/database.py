"""The one way the server and the command-line tools reach MongoDB: a store
from the settings, and the message a person sees when it is not there."""

from __future__ import annotations

from collections.abc import Sequence

from pymongo import monitoring
from pymongo.errors import PyMongoError

from service.config import Settings
from service.store import MongoStore, connect

__all__ = ["store_from", "unreachable"]


def store_from(
    settings: Settings, listeners: Sequence[monitoring.CommandListener] = ()
) -> MongoStore:
    """The store ``LOOM_MONGODB_URI`` and ``LOOM_MONGODB_DB`` name, with the
    connection bounds the settings give (``LOOM_MONGODB_TIMEOUT``,
    ``LOOM_MONGODB_MAX_POOL``; connections open lazily)."""
    return connect(
        settings.mongodb_uri.get_secret_value(),
        settings.mongodb_db,
        timeout=settings.mongodb_timeout,
        max_pool=settings.mongodb_max_pool,
        listeners=listeners,
    )


def unreachable(exc: PyMongoError) -> str:
    """What to tell a person when MongoDB did not answer (one line, no
    secret: the URI may hold a password, so it is named, not shown)."""
    return (
        f"loom: cannot reach MongoDB at LOOM_MONGODB_URI ({type(exc).__name__}); "
        "start it or point LOOM_MONGODB_URI at a running server"
    )
