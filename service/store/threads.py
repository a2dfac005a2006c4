"""Threads collection, with each thread's cached context."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection

from service.core.clock import now
from service.core.filtering import Comparison
from service.core.models import (
    ContextEntry,
    MessageStatus,
    PendingRun,
    Role,
    Summary,
    Thread,
    ThreadOrigin,
    ToolCall,
    Usage,
)
from service.core.ports import PendingThreadDelete, ThreadClaim
from service.store.fencing import Fences
from service.store.order import NEWEST_FIRST, older_than
from service.store.scoped import key, object_id
from service.store.tooldocs import tool_doc, tool_from_doc

__all__ = ["MongoThreadStore", "to_doc"]

Doc = dict[str, Any]


def _context_blob(entries: Sequence[ContextEntry]) -> str:
    """The context cache as one JSON string: it is never queried, only read
    whole, and one string is far cheaper than hundreds of sub-documents for
    FerretDB to convert (about 12 ms for 200 entries) and smaller in BSON."""
    return json.dumps(
        [
            [
                e.sequence,
                e.role.value,
                e.content,
                e.status.value,
                e.tokens,
                [[c.tool_call_id, c.name, c.arguments] for c in e.tool_calls],
                e.tool_call_id,
                _millis(e.create_time),
            ]
            for e in entries
        ],
        separators=(",", ":"),
    )


def _context_from_blob(blob: str | None) -> list[ContextEntry]:
    if not blob:
        return []
    return [
        ContextEntry(
            int(e[0]),
            _ROLES[e[1]],
            e[2],
            _STATUSES[e[3]],
            int(e[4]),
            tuple(ToolCall(*c) for c in e[5]) if len(e) > 5 else (),
            e[6] if len(e) > 6 else "",
            datetime.fromtimestamp(e[7] / 1000, UTC) if len(e) > 7 and e[7] is not None else None,
        )
        for e in json.loads(blob)
    ]


def _millis(t: datetime | None) -> int | None:
    return None if t is None else round(t.timestamp() * 1000)


def _run_doc(run: PendingRun | None) -> Doc | None:
    if run is None:
        return None
    return {
        "run_id": run.run_id,
        "message_id": run.message_id,
        "user_message_id": run.user_message_id,
        "tool_call_ids": list(run.tool_call_ids),
        "round": run.round,
        "model": run.model,
        "expire_time": run.expire_time,
        "tools": None if run.tools is None else [tool_doc(t) for t in run.tools],
        "tool_choice": run.tool_choice,
        "request_id": run.request_id,
    }


def _run_from_doc(d: Doc | None) -> PendingRun | None:
    if not d:
        return None
    tools = d.get("tools")
    return PendingRun(
        run_id=d["run_id"],
        message_id=d["message_id"],
        user_message_id=d["user_message_id"],
        tool_call_ids=tuple(d["tool_call_ids"]),
        round=int(d["round"]),
        model=d["model"],
        expire_time=d["expire_time"],
        tools=None if tools is None else tuple(tool_from_doc(t) for t in tools),
        tool_choice=d.get("tool_choice", ""),
        request_id=d.get("request_id", ""),
    )


_ROLES = {r.value: r for r in Role}
_STATUSES = {s.value: s for s in MessageStatus}


def _usage_inc(usage: Usage) -> Doc:
    # A $inc is atomic on MongoDB only: FerretDB 1.x reads and rewrites the
    # document, losing concurrent updates, so each counter has one writer at
    # a time (the thread's lease holder, or the usage lease of its jobs).
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _summary_doc(s: Summary | None) -> Doc | None:
    if s is None:
        return None
    return {"text": s.text, "through": s.through_sequence, "model": s.model, "time": s.update_time}


_OPERATORS = {"=": "$eq", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}


def _comparison_query(c: Comparison) -> Doc:
    """One filter comparison as a query on the threads collection (metadata
    keys by dot notation, which MongoDB and FerretDB both read)."""
    return {c.name: {_OPERATORS[c.op]: c.value}}


def _unexpired(t: datetime) -> Doc:
    """Threads not expired at ``t`` (one clause of an ``$and``, beside any
    other ``$or`` a query has)."""
    return {"$or": [{"expire_time": None}, {"expire_time": {"$gt": t}}]}


def _hidden(d: Doc) -> bool:
    expire = d.get("expire_time")
    return bool(d.get("deleting")) or (expire is not None and expire <= now())


def to_doc(t: Thread) -> Doc:
    """The stored document of ``t``, its cached context included."""
    return {
        "_id": key(t.tenant, t.thread_id),
        "tenant": t.tenant,
        "assistant_id": t.assistant_id,
        "user_id": t.user_id,
        "metadata": t.metadata,
        "message_count": t.message_count,
        "create_time": t.create_time,
        "update_time": t.update_time,
        "context": _context_blob(t.context) if t.context else "",
        "summary": _summary_doc(t.summary),
        "run": _run_doc(t.run),
        "expire_time": t.expire_time,
        "expire_memories": t.expire_memories,
        "forked_from": {"thread_id": origin.thread_id, "through": origin.through_sequence}
        if (origin := t.forked_from)
        else None,
    }


def _from_doc(d: Doc) -> Thread:
    origin = d.get("forked_from")
    return Thread(
        thread_id=object_id(d["_id"]),
        tenant=d["tenant"],
        assistant_id=d["assistant_id"],
        user_id=d.get("user_id", ""),
        metadata=dict(d.get("metadata") or {}),
        message_count=int(d.get("message_count", 0)),
        create_time=d.get("create_time"),
        update_time=d.get("update_time"),
        context=_context_from_blob(d.get("context")),
        summary=Summary(s["text"], int(s["through"]), s.get("model", ""), s.get("time"))
        if (s := d.get("summary"))
        else None,
        run=_run_from_doc(d.get("run")),
        expire_time=d.get("expire_time"),
        expire_memories=bool(d.get("expire_memories", False)),
        forked_from=ThreadOrigin(origin["thread_id"], int(origin["through"])) if origin else None,
        usage=Usage(int(d.get("input_tokens", 0)), int(d.get("output_tokens", 0))),
        open_batch=d.get("open_batch"),
        fence=int(d.get("fence", 0)),
        replying=bool(d.get("replying")),
    )


class MongoThreadStore:
    """``ThreadStore`` over the threads collection, and a usage document per
    thread for the tokens its background jobs spend (kept apart from the
    thread document, whose writers hold the thread's lease).

    Reads and writes of one thread filter on ``_id`` alone, which holds the
    tenant (``scoped.py``): MongoDB serves that from the primary key, and
    FerretDB 1.x pushes down no other filter (anything else scans the
    collection).
    """

    def __init__(
        self,
        collection: AsyncCollection[Doc],
        usage: AsyncCollection[Doc],
        fences: Fences | None = None,
    ) -> None:
        self._c = collection
        self._usage = usage
        self._fences = fences or Fences()

    async def insert(self, thread: Thread) -> None:
        await self._c.insert_one(to_doc(thread))

    async def get(self, tenant: str, thread_id: str) -> Thread | None:
        doc = await self._c.find_one({"_id": key(tenant, thread_id)})
        if doc is None or _hidden(doc):
            return None
        return _from_doc(doc)

    async def find_page(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        limit: int,
        after: tuple[datetime, str] | None,
        where: Sequence[Comparison] = (),
    ) -> list[Thread]:
        query: Doc = {"tenant": tenant, "deleting": {"$ne": True}}
        if assistant_id:
            query["assistant_id"] = assistant_id
        if user_id:
            query["user_id"] = user_id
        query["$and"] = [_unexpired(now()), *(_comparison_query(c) for c in where)]
        if after is not None:
            query["$and"].append(older_than(after, key(tenant, after[1])))
        cursor = self._c.find(query, {"context": 0}).sort(NEWEST_FIRST).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def update(
        self, tenant: str, thread_id: str, changes: dict[str, object], update_time: datetime
    ) -> Thread | None:
        if await self.get(tenant, thread_id) is None:
            return None
        doc = await self._c.find_one_and_update(
            {"_id": key(tenant, thread_id)},
            {"$set": {**changes, "update_time": update_time}},
            return_document=ReturnDocument.AFTER,
        )
        return _from_doc(doc) if doc is not None and not _hidden(doc) else None

    async def add_usage(self, tenant: str, thread_id: str, usage: Usage) -> None:
        await self._usage.update_one(
            {"_id": key(tenant, thread_id)},
            {"$inc": _usage_inc(usage), "$set": {"tenant": tenant}},
            upsert=True,
        )

    async def job_usage(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, Usage]:
        # The tenant, not the $in on _id, is what FerretDB pushes down to an index.
        keys = [key(tenant, thread_id) for thread_id in thread_ids]
        cursor = self._usage.find({"tenant": tenant, "_id": {"$in": keys}})
        return {
            object_id(d["_id"]): Usage(
                int(d.get("input_tokens", 0)), int(d.get("output_tokens", 0))
            )
            async for d in cursor
        }

    async def mark_batch(self, tenant: str, thread_id: str, start: int | None) -> None:
        await self._c.update_one({"_id": key(tenant, thread_id)}, {"$set": {"open_batch": start}})

    async def claim_expired(
        self, tenant: str, thread_id: str, at: datetime
    ) -> PendingThreadDelete | None:
        doc = await self._c.find_one({"_id": key(tenant, thread_id)})
        if doc is None or doc.get("deleting"):
            return None
        expire = doc.get("expire_time")
        if expire is None or expire > at:
            return None
        forget = bool(doc.get("expire_memories"))
        result = await self._c.update_one(
            {"_id": key(tenant, thread_id), "expire_time": expire},
            {"$set": {"deleting": True, "forget_memories": forget}},
        )
        if result.modified_count != 1:  # its expiration changed meanwhile
            return None
        return PendingThreadDelete(tenant, doc["assistant_id"], thread_id, forget)

    async def ids_of_assistant(self, tenant: str, assistant_id: str) -> list[str]:
        cursor = self._c.find({"tenant": tenant, "assistant_id": assistant_id}, {"_id": 1})
        return [object_id(d["_id"]) async for d in cursor]

    async def mark_deleting(self, tenant: str, thread_id: str, forget: bool = False) -> bool:
        if await self.get(tenant, thread_id) is None:
            return False
        await self._c.update_one(
            {"_id": key(tenant, thread_id)},
            {"$set": {"deleting": True, "forget_memories": forget}},
        )
        return True

    async def delete(self, tenant: str, thread_id: str) -> None:
        await self._usage.delete_one({"_id": key(tenant, thread_id)})
        await self._c.delete_one({"_id": key(tenant, thread_id)})

    async def pending_deletes(self) -> list[PendingThreadDelete]:
        cursor = self._c.find(
            {"deleting": True}, {"tenant": 1, "assistant_id": 1, "forget_memories": 1}
        )
        return [
            PendingThreadDelete(
                d["tenant"], d["assistant_id"], object_id(d["_id"]), bool(d.get("forget_memories"))
            )
            async for d in cursor
        ]

    async def claim(self, tenant: str, thread_id: str, epoch: int) -> ThreadClaim:
        doc_id = key(tenant, thread_id)
        before = await self._fences.find_and_update(
            self._c, doc_id, epoch, {"replying": True}, after=False
        )
        if before is not None and not _hidden(before):
            return ThreadClaim(_from_doc(before))
        if before is not None:  # being deleted or expired: put the flag back
            await self._c.update_one(
                {"_id": doc_id}, {"$set": {"replying": bool(before.get("replying"))}}
            )
            return ThreadClaim(None)
        doc = await self._c.find_one({"_id": doc_id}, {"fence": 1, "deleting": 1, "expire_time": 1})
        if doc is None or _hidden(doc):
            return ThreadClaim(None)
        return ThreadClaim(None, int(doc.get("fence", 0)))

    async def save_context(
        self,
        tenant: str,
        thread_id: str,
        context: Sequence[ContextEntry],
        message_count: int,
        update_time: datetime,
        run: PendingRun | None = None,
        usage: Usage | None = None,
        *,
        epoch: int,
        replying: bool = False,
    ) -> bool:
        changes = {
            "context": _context_blob(context),
            "message_count": message_count,
            "update_time": update_time,
            "run": _run_doc(run),
            "open_batch": None,
            "replying": replying,
        }
        inc = _usage_inc(usage) if usage is not None else None
        return await self._fences.update(self._c, key(tenant, thread_id), epoch, changes, inc=inc)

    async def unfinished(self, limit: int) -> list[tuple[str, str]]:
        cursor = self._c.find({"replying": True}, {"tenant": 1}).limit(limit)
        return [(d["tenant"], object_id(d["_id"])) async for d in cursor]

    async def end_claim(self, tenant: str, thread_id: str, *, epoch: int) -> bool:
        return await self._fences.update(
            self._c, key(tenant, thread_id), epoch, {"replying": False}
        )

    async def save_summary(
        self,
        tenant: str,
        thread_id: str,
        summary: Summary,
        context: Sequence[ContextEntry],
        *,
        epoch: int,
    ) -> bool:
        changes = {"summary": _summary_doc(summary), "context": _context_blob(context)}
        return await self._fences.update(self._c, key(tenant, thread_id), epoch, changes)
