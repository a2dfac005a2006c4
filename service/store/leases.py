"""Leases collection: one document per thread (or job) with work in flight."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.lease_port import LeaseGrant, LeaseOutcome, LeaseState

__all__ = ["MongoLeaseStore"]

Doc = dict[str, Any]

# A takeover can meet a marker left by a taker that died, then clear it, so
# it may need one round more than a plain race with a release.
_ROUNDS = 4


def _state(d: Doc) -> LeaseState:
    return LeaseState(
        owner=d["owner"],
        expires=d["expires"],
        purpose=d.get("purpose", ""),
        epoch=int(d.get("epoch", 0)),
    )


def _queue_prefix(thread_id: str) -> str:
    return f"{thread_id}/queue/"


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class MongoLeaseStore:
    """``LeaseStore``: ``_id`` is the thread id, so taking a free lease is one
    insert that only one caller can win.

    Taking over an expired lease is settled the same way: the taker first
    inserts a marker named after the dead holder, which only one taker can
    create, then replaces the lease only if it is still the dead holder's,
    then deletes the marker. The marker expires with the lease it is taking:
    a taker that dies between its steps leaves a marker the next taker finds
    expired and deletes (only that marker, by its expiry), so a thread is
    never blocked for longer than one lease's lifetime.

    Why not one conditional replace (``{_id, owner, expires}``)? On MongoDB
    that alone is atomic; FerretDB 1.x runs an update as a query, then a
    write by ``_id`` of the document it read, so two takers could both
    match. The unique insert is atomic on both; the conditional replace
    after it only narrows what is left on FerretDB (a taker stalled for a
    whole lease lifetime between two writes, then overwriting the next
    taker; that next holder's renewal then fails and it is told it lost)."""

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
    ) -> LeaseGrant:
        doc: Doc = {
            "_id": thread_id,
            "tenant": tenant,
            "owner": owner,
            "expires": expires,
            "purpose": purpose,
            "epoch": _millis(now),
        }
        for _ in range(_ROUNDS):
            try:
                await self._c.insert_one(doc)
                return LeaseGrant(LeaseOutcome.ACQUIRED, doc["epoch"])
            except DuplicateKeyError:
                held = await self._c.find_one({"_id": thread_id})
            if held is None:  # released between the two calls: try again
                continue
            if held["expires"] > now:
                return LeaseGrant(LeaseOutcome.BUSY, other=_state(held))
            stale = _state(held)
            taken = await self._take_over(
                held, {**doc, "epoch": max(doc["epoch"], stale.epoch + 1)}
            )
            if taken is not None:
                return taken
            if await self._busy_marker(thread_id, stale.owner, now):
                return LeaseGrant(LeaseOutcome.BUSY)
        return LeaseGrant(LeaseOutcome.BUSY)

    async def _take_over(self, held: Doc, doc: Doc) -> LeaseGrant | None:
        """Replace the expired lease ``held`` by ``doc``; None when another
        taker's marker is in the way or the lease changed meanwhile."""
        marker = f"{doc['_id']}/takeover/{held['owner']}"
        try:
            await self._c.insert_one(
                {"_id": marker, "tenant": doc["tenant"], "expires": doc["expires"]}
            )
        except DuplicateKeyError:
            return None
        try:
            replaced = await self._c.replace_one(
                {"_id": doc["_id"], "owner": held["owner"], "expires": held["expires"]}, doc
            )
        finally:
            await self._c.delete_one({"_id": marker})
        if replaced.matched_count != 1:  # renewed, released or taken meanwhile
            return None
        return LeaseGrant(LeaseOutcome.TAKEN_OVER, doc["epoch"], _state(held))

    async def _busy_marker(self, thread_id: str, dead_owner: str, now: datetime) -> bool:
        """True while another taker's marker on ``dead_owner``'s lease is
        live; an expired one (its taker died) is deleted, by its expiry, so
        that the next round can take over."""
        marker = await self._c.find_one({"_id": f"{thread_id}/takeover/{dead_owner}"})
        if marker is None:
            return False
        expires = marker.get("expires")
        if isinstance(expires, datetime) and expires > now:
            return True
        await self._c.delete_one({"_id": marker["_id"], "expires": expires})
        return False

    async def renew(self, thread_id: str, owner: str, expires: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "owner": owner}, {"$set": {"expires": expires}}
        )
        return result.matched_count == 1

    async def set_epoch(self, thread_id: str, owner: str, epoch: int) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "owner": owner}, {"$set": {"epoch": epoch}}
        )
        return result.matched_count == 1

    async def release(self, thread_id: str, owner: str) -> None:
        await self._c.delete_one({"_id": thread_id, "owner": owner})

    async def current(self, thread_id: str) -> LeaseState | None:
        doc = await self._c.find_one({"_id": thread_id})
        return _state(doc) if doc else None

    async def ask_interrupt(self, thread_id: str, owner: str) -> bool:
        result = await self._c.update_one(
            {"_id": thread_id, "owner": owner}, {"$set": {"interrupt": True}}
        )
        return result.matched_count == 1

    async def interrupts_asked(self, thread_ids: Sequence[str]) -> list[tuple[str, str]]:
        cursor = self._c.find({"_id": {"$in": list(thread_ids)}, "interrupt": True}, {"owner": 1})
        return [(str(d["_id"]), str(d["owner"])) async for d in cursor]

    # A ticket's ``_id`` is the thread's queue prefix and the ticket, so the
    # queue is read in order with an anchored prefix match on ``_id`` (served
    # by the ``_id`` index on MongoDB) and no index of its own.

    async def join(self, tenant: str, thread_id: str, ticket: str, expires: datetime) -> None:
        # An upsert, so that joining twice under one ticket is harmless.
        await self._c.update_one(
            {"_id": _queue_prefix(thread_id) + ticket},
            {"$set": {"tenant": tenant, "expires": expires}},
            upsert=True,
        )

    async def keep(self, thread_id: str, ticket: str, expires: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": _queue_prefix(thread_id) + ticket}, {"$set": {"expires": expires}}
        )
        return result.matched_count == 1

    async def leave(self, thread_id: str, ticket: str) -> None:
        await self._c.delete_one({"_id": _queue_prefix(thread_id) + ticket})

    async def queued(self, thread_id: str, now: datetime) -> list[str]:
        prefix = _queue_prefix(thread_id)
        match = {"_id": {"$regex": "^" + re.escape(prefix)}}
        docs = await self._c.find(match, {"expires": 1}).sort("_id", 1).to_list(None)
        if any(d["expires"] <= now for d in docs):
            # Their waiters died: nobody else removes them.
            await self._c.delete_many({**match, "expires": {"$lte": now}})
        return [d["_id"][len(prefix) :] for d in docs if d["expires"] > now]
