"""A start-up check of how this replica sits beside the others on its
database: they must keep memories in one memory store.

Replicas share their jobs through the database, so a job one replica
queued may run on another: a thread's expiry forgetting its memories, an
extraction job writing them. Replicas that each keep an embedded Chroma
(no ``LOOM_CHROMA_URL``) would run those jobs against the wrong store, and
memories a deletion asked to forget would stay where they were written.
Nothing else tells: both replicas serve, each from its own memories. So
every start records where it keeps memories in the database, and says
loudly when the replica that started before it kept them elsewhere.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from service.config import Settings
from service.store import MongoStore

__all__ = ["check_memory_store", "memory_store_of"]

log = logging.getLogger(__name__)


def memory_store_of(settings: Settings) -> str:
    """Where a replica with these settings keeps memories, as a person reads it."""
    if settings.chroma_url:
        return f"the Chroma server at {settings.chroma_url}"
    path = (Path(settings.data_dir) / "chroma").resolve()
    return f"an embedded Chroma in {path} on {socket.gethostname()}"


async def check_memory_store(store: MongoStore, settings: Settings) -> str | None:
    """Record this replica's memory store in the database; warn, and return
    the other store, if the replica that started before it on this database
    used another one."""
    here = memory_store_of(settings)
    before = await store.note_memory_store(here)
    if before is None or before == here:
        return None
    log.warning(
        "the replica that started before this one on database %r keeps memories in %s; "
        "this one keeps them in %s. Replicas that share a database must share one memory "
        "store (set LOOM_CHROMA_URL to one Chroma server on every replica), or jobs run on "
        "one replica miss the memories of another (a thread deleted with its memories keeps "
        "them). After a deliberate move to another store this shows once and can be ignored.",
        settings.mongodb_db,
        before,
        here,
    )
    return before
