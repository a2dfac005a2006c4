"""Threads collection, including each thread's reply lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from service.core.models import Thread
from service.core.ports import LeaseOutcome

__all__ = ["MongoThreadStore"]

Doc = dict[str, Any]
_LIVE = {"deleting": {"$ne": True}}


def _from_doc(d: Doc) -> Thread:
    return Thread(
        thread_id=d["_id"],
        tenant=d["tenant"],
        assistant_id=d["assistant_id"],
        user_id=d.get("user_id", ""),
        metadata=dict(d.get("metadata") or {}),
        message_count=int(d.get("message_count", 0)),
        create_time=d.get("create_time"),
        update_time=d.get("update_time"),
    )


class MongoThreadStore:
    """``ThreadStore`` over one collection.

    The lease is two fields on the thread, ``lease_owner`` and
    ``lease_expires``, taken with one conditional update: atomic on a single
    document in MongoDB and FerretDB alike, so it holds across replicas, and
    it expires, so a crashed holder never locks a thread for good.
    """

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def insert(self, thread: Thread) -> None:
        await self._c.insert_one(
            {
                "_id": thread.thread_id,
                "tenant": thread.tenant,
                "assistant_id": thread.assistant_id,
                "user_id": thread.user_id,
                "metadata": thread.metadata,
                "message_count": 0,
                "create_time": thread.create_time,
                "update_time": thread.update_time,
                "lease_owner": None,
                "lease_expires": None,
            }
        )

    async def get(self, tenant: str, thread_id: str) -> Thread | None:
        doc = await self._c.find_one({"_id": thread_id, "tenant": tenant, **_LIVE})
        return _from_doc(doc) if doc else None

    async def find_page(
        self, tenant: str, assistant_id: str, user_id: str, limit: int, after: str | None
    ) -> list[Thread]:
        query: Doc = {"tenant": tenant, **_LIVE}
        if assistant_id:
            query["assistant_id"] = assistant_id
        if user_id:
            query["user_id"] = user_id
        if after is not None:
            query["_id"] = {"$lt": after}
        cursor = self._c.find(query).sort("_id", DESCENDING).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def ids_of_assistant(self, tenant: str, assistant_id: str) -> list[str]:
        cursor = self._c.find({"tenant": tenant, "assistant_id": assistant_id}, {"_id": 1})
        return [d["_id"] async for d in cursor]

    async def mark_deleting(self, tenant: str, thread_id: str) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "tenant": tenant, **_LIVE}, {"$set": {"deleting": True}}
        )
        return result.matched_count == 1

    async def delete(self, tenant: str, thread_id: str) -> None:
        await self._c.delete_one({"_id": thread_id, "tenant": tenant})

    async def pending_deletes(self) -> list[tuple[str, str]]:
        cursor = self._c.find({"deleting": True}, {"tenant": 1})
        return [(d["tenant"], d["_id"]) async for d in cursor]

    async def acquire_lease(
        self, tenant: str, thread_id: str, owner: str, expires: datetime, now: datetime
    ) -> LeaseOutcome:
        before = await self._c.find_one_and_update(
            {
                "_id": thread_id,
                "tenant": tenant,
                **_LIVE,
                "$or": [{"lease_owner": None}, {"lease_expires": {"$lt": now}}],
            },
            {"$set": {"lease_owner": owner, "lease_expires": expires}},
            # No projection: FerretDB 1.x does not implement findAndModify's "fields".
            return_document=ReturnDocument.BEFORE,
        )
        if before is not None:
            return LeaseOutcome.TAKEN_OVER if before.get("lease_owner") else LeaseOutcome.ACQUIRED
        if await self._c.count_documents({"_id": thread_id, "tenant": tenant, **_LIVE}) == 0:
            return LeaseOutcome.MISSING
        return LeaseOutcome.BUSY

    async def renew_lease(self, tenant: str, thread_id: str, owner: str, expires: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "tenant": tenant, "lease_owner": owner},
            {"$set": {"lease_expires": expires}},
        )
        return result.matched_count == 1

    async def release_lease(self, tenant: str, thread_id: str, owner: str) -> None:
        await self._c.update_one(
            {"_id": thread_id, "tenant": tenant, "lease_owner": owner},
            {"$set": {"lease_owner": None, "lease_expires": None}},
        )

    async def lease_expired(self, tenant: str, thread_id: str, now: datetime) -> bool:
        doc = await self._c.find_one(
            {"_id": thread_id, "tenant": tenant}, {"lease_owner": 1, "lease_expires": 1}
        )
        if doc is None or doc.get("lease_owner") is None:
            return True
        expires = doc.get("lease_expires")
        return expires is None or expires < now
