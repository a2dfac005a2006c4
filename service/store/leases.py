"""Leases collection: one document per thread with a reply in flight."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.ports import LeaseOutcome, LeaseState

__all__ = ["MongoLeaseStore"]

Doc = dict[str, Any]


def _state(d: Doc) -> LeaseState:
    return LeaseState(owner=d["owner"], expires=d["expires"], purpose=d.get("purpose", ""))


class MongoLeaseStore:
    """``LeaseStore``: ``_id`` is the thread id, so taking a free lease is one
    insert that only one caller can win. Taking over an expired lease is
    settled the same way: the taker first inserts a marker named after the
    dead holder, which only one taker can create."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def acquire(
        self,
        tenant: str,
        thread_id: str,
        owner: str,
        expires: datetime,
        now: datetime,
        purpose: str = "",
    ) -> tuple[LeaseOutcome, LeaseState | None]:
        doc: Doc = {
            "_id": thread_id,
            "tenant": tenant,
            "owner": owner,
            "expires": expires,
            "purpose": purpose,
        }
        for _ in range(3):
            try:
                await self._c.insert_one(doc)
                return LeaseOutcome.ACQUIRED, None
            except DuplicateKeyError:
                held = await self._c.find_one({"_id": thread_id})
            if held is None:  # released between the two calls: try again
                continue
            if held["expires"] > now:
                return LeaseOutcome.BUSY, _state(held)
            stale = _state(held)
            marker = f"{thread_id}/takeover/{stale.owner}"
            try:
                await self._c.insert_one({"_id": marker, "tenant": tenant, "expires": expires})
            except DuplicateKeyError:
                return LeaseOutcome.BUSY, None
            await self._c.replace_one({"_id": thread_id}, doc, upsert=True)
            await self._c.delete_one({"_id": marker})
            return LeaseOutcome.TAKEN_OVER, stale
        return LeaseOutcome.BUSY, None

    async def renew(self, thread_id: str, owner: str, expires: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "owner": owner}, {"$set": {"expires": expires}}
        )
        return result.matched_count == 1

    async def release(self, thread_id: str, owner: str) -> None:
        await self._c.delete_one({"_id": thread_id, "owner": owner})

    async def current(self, thread_id: str) -> LeaseState | None:
        doc = await self._c.find_one({"_id": thread_id})
        return _state(doc) if doc else None
