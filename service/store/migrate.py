"""Re-keying documents stored before keys held their tenant (``scoped.py``),
once, when a Loom starts on such a database."""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from service.store.scoped import SEPARATOR, key

__all__ = ["scope_keys"]

log = logging.getLogger(__name__)

Doc = dict[str, Any]
_COLLECTIONS = ("assistants", "threads", "messages", "jobs")
_DONE = "scoped-keys"


async def scope_keys(db: AsyncDatabase[Doc]) -> int:
    """Give every assistant, thread, message and job stored under a bare id
    the key scoped by its tenant; return how many moved.

    Done once: the ``migrations`` collection records it, so later starts
    cost one read. A key cannot be changed in place, so each document is
    parked under its new key in ``migrating`` first, then its old copy is
    deleted, then the parked one is inserted (in that order because a
    message's (thread_id, sequence) must stay unique): a crash at any point
    loses nothing, and the next start lands what was parked. Replicas
    starting together may both do it; every step tolerates the other's.
    """
    if await db["migrations"].find_one({"_id": _DONE}) is not None:
        return 0
    moved = await _land_parked(db)
    for name in _COLLECTIONS:
        collection = db[name]
        bare = [
            d["_id"] async for d in collection.find({}, {"_id": 1}) if SEPARATOR not in d["_id"]
        ]
        for old in bare:
            doc = await collection.find_one({"_id": old})
            if doc is None:  # another replica moved it
                continue
            parked = {"_id": f"{name}{SEPARATOR}{old}", "collection": name, "old": old}
            parked["doc"] = doc | {"_id": key(doc["tenant"], old)}
            await db["migrating"].replace_one({"_id": parked["_id"]}, parked, upsert=True)
            await collection.delete_one({"_id": old})
            moved += await _land(db, parked)
    if moved:
        log.info("re-keyed %d stored documents by tenant", moved)
    # A replica starting beside this one may upsert it first.
    with contextlib.suppress(DuplicateKeyError):
        await db["migrations"].update_one(
            {"_id": _DONE}, {"$set": {"time": datetime.now(UTC)}}, upsert=True
        )
    return moved


async def _land_parked(db: AsyncDatabase[Doc]) -> int:
    """Insert what an interrupted run parked."""
    return sum([await _land(db, parked) async for parked in db["migrating"].find({})])


async def _land(db: AsyncDatabase[Doc], parked: Doc) -> int:
    """Insert a parked document under its new key and unpark it; 1 if this
    call inserted it. If something else holds its place (a message's
    sequence taken meanwhile), it stays parked and is logged, never lost."""
    collection = db[parked["collection"]]
    inserted = 1
    try:
        await collection.insert_one(parked["doc"])
    except DuplicateKeyError:
        inserted = 0
        if await collection.find_one({"_id": parked["doc"]["_id"]}, {"_id": 1}) is None:
            log.error(
                "could not re-key %s %s: its place is taken; it is kept in the "
                "'migrating' collection",
                parked["collection"],
                parked["old"],
            )
            return 0
    await db["migrating"].delete_one({"_id": parked["_id"]})
    return inserted
