"""Per-assistant memory write counters, shared by every replica."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from service.store.scoped import key

__all__ = ["MongoMemoryVersions"]

Doc = dict[str, Any]


class MongoMemoryVersions:
    """``service.memory.ports.VersionSource`` over one collection: ``$inc`` is
    atomic on MongoDB, so every replica sees every other's writes and rebuilds
    its lexical index when they happen."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def current(self, tenant: str, assistant_id: str) -> int:
        doc = await self._c.find_one({"_id": key(tenant, assistant_id)})
        return int(doc["version"]) if doc else 0

    async def bump(self, tenant: str, assistant_id: str) -> int:
        doc = await self._c.find_one_and_update(
            {"_id": key(tenant, assistant_id)},
            {"$inc": {"version": 1}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["version"]) if doc else 0
