"""Messages collection: per-thread sequence numbers without gaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from service.core.models import MemoryMode, Message, MessageStatus, Role, ToolCall, Usage
from service.store.fencing import Fences
from service.store.scoped import key, object_id

__all__ = ["MongoMessageStore", "to_doc"]

Doc = dict[str, Any]
_MAX_APPEND_ATTEMPTS = 64


def to_doc(m: Message, epoch: int = 0) -> Doc:
    """The stored document of ``m``, written under the lease ``epoch``."""
    return {
        "fence": epoch,
        "_id": key(m.tenant, m.message_id),
        "tenant": m.tenant,
        "thread_id": m.thread_id,
        "role": m.role.value,
        "content": m.content,
        "status": m.status.value,
        "sequence": m.sequence,
        "model": m.model,
        "usage": _usage_doc(m.usage),
        "metadata": m.metadata,
        "memory": m.memory.value,
        "create_time": m.create_time,
        "request_id": m.request_id,
        "error": m.error,
        "tool_calls": _calls_doc(m.tool_calls),
        "tool_call_id": m.tool_call_id,
        "run_id": m.run_id,
    }


def _calls_doc(calls: Sequence[ToolCall]) -> list[Doc]:
    # Documents, not [id, name, arguments] arrays: FerretDB rejects nested arrays.
    return [{"id": c.tool_call_id, "name": c.name, "arguments": c.arguments} for c in calls]


def _usage_doc(usage: Usage | None) -> Doc | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _from_doc(d: Doc) -> Message:
    usage = d.get("usage")
    return Message(
        message_id=object_id(d["_id"]),
        tenant=d["tenant"],
        thread_id=d["thread_id"],
        role=Role(d["role"]),
        content=d.get("content", ""),
        status=MessageStatus(d["status"]),
        sequence=int(d["sequence"]),
        model=d.get("model", ""),
        usage=Usage(int(usage["input_tokens"]), int(usage["output_tokens"])) if usage else None,
        metadata=dict(d.get("metadata") or {}),
        memory=MemoryMode(d.get("memory", MemoryMode.OFF.value)),
        create_time=d.get("create_time"),
        request_id=d.get("request_id", ""),
        error=d.get("error", ""),
        tool_calls=[
            ToolCall(c["id"], c["name"], c["arguments"]) for c in d.get("tool_calls") or ()
        ],
        tool_call_id=d.get("tool_call_id", ""),
        run_id=d.get("run_id", ""),
    )


class MongoMessageStore:
    """``MessageStore`` over the messages collection.

    One message is read and written by ``_id`` alone, which holds the
    tenant (``scoped.py``) and which MongoDB serves from the primary key and
    FerretDB 1.x pushes down to SQLite; listing a thread uses the
    (thread_id, sequence) index on MongoDB.
    """

    def __init__(self, collection: AsyncCollection[Doc], fences: Fences | None = None) -> None:
        self._c = collection
        self._fences = fences or Fences()

    async def append(self, message: Message, first_try: int, *, epoch: int = 0) -> Message:
        """Insert at the first free sequence number from ``first_try`` on.

        The unique (thread_id, sequence) index arbitrates between concurrent
        writers: the loser of a race gets a duplicate-key error and tries the
        next number, so numbers never repeat and never skip.
        """
        sequence = first_try
        for _ in range(_MAX_APPEND_ATTEMPTS):
            message.sequence = sequence
            try:
                await self._c.insert_one(to_doc(message, epoch))
                return message
            except DuplicateKeyError:
                mine = await self._c.find_one({"_id": key(message.tenant, message.message_id)})
                if mine is not None:  # a retried insert that had in fact landed
                    message.sequence = int(mine["sequence"])
                    return message
                sequence += 1
        raise RuntimeError(f"could not allocate a sequence number in {message.thread_id}")

    async def append_all(
        self, messages: list[Message], first_try: int, *, epoch: int = 0
    ) -> list[Message]:
        """Insert consecutive messages in one round trip when their numbers
        are free, else one by one as ``append`` does."""
        for offset, message in enumerate(messages):
            message.sequence = first_try + offset
        try:
            await self._c.insert_many([to_doc(m, epoch) for m in messages], ordered=True)
            return messages
        except BulkWriteError as exc:
            landed = int(exc.details.get("nInserted", 0))
        next_try = messages[landed - 1].sequence + 1 if landed else first_try
        for message in messages[landed:]:
            await self.append(message, next_try, epoch=epoch)
            next_try = message.sequence + 1
        return messages

    async def get(self, tenant: str, message_id: str) -> Message | None:
        doc = await self._c.find_one({"_id": key(tenant, message_id)})
        return _from_doc(doc) if doc else None

    async def finish(
        self,
        tenant: str,
        message_id: str,
        *,
        content: str,
        status: MessageStatus,
        usage: Usage | None = None,
        error: str = "",
        tool_calls: Sequence[ToolCall] = (),
        epoch: int,
    ) -> Message | None:
        changes = {
            "content": content,
            "status": status.value,
            "usage": _usage_doc(usage),
            "error": error,
            "tool_calls": _calls_doc(tool_calls),
        }
        doc_id = key(tenant, message_id)
        doc = await self._fences.find_and_update(self._c, doc_id, epoch, changes, after=True)
        return _from_doc(doc) if doc else None

    async def save_progress(
        self, tenant: str, message_id: str, content: str, *, epoch: int
    ) -> bool:
        return await self._fences.update(
            self._c, key(tenant, message_id), epoch, {"content": content}
        )

    async def restart(self, tenant: str, message_id: str, model: str, *, epoch: int) -> bool:
        current = await self.get(tenant, message_id)
        if current is None or current.status is not MessageStatus.FAILED or current.content:
            return False
        changes = {"status": MessageStatus.IN_PROGRESS.value, "model": model, "error": ""}
        return await self._fences.update(self._c, key(tenant, message_id), epoch, changes)

    async def find_page(
        self,
        tenant: str,
        thread_id: str,
        limit: int,
        after: int | None,
        descending: bool,
        before: int | None = None,
    ) -> list[Message]:
        query: Doc = {"thread_id": thread_id, "tenant": tenant}
        bounds: Doc = {}
        if after is not None:
            bounds["$lt" if descending else "$gt"] = after
        if before is not None:
            bounds["$lt"] = min(before, bounds.get("$lt", before))
        if bounds:
            query["sequence"] = bounds
        order = DESCENDING if descending else ASCENDING
        cursor = self._c.find(query).sort("sequence", order).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def history(self, tenant: str, thread_id: str, before: int) -> list[Message]:
        cursor = self._c.find(
            {"thread_id": thread_id, "tenant": tenant, "sequence": {"$lt": before}}
        ).sort("sequence", ASCENDING)
        return [_from_doc(d) async for d in cursor]

    async def delete_from(self, tenant: str, thread_id: str, sequence: int) -> int:
        result = await self._c.delete_many(
            {"thread_id": thread_id, "tenant": tenant, "sequence": {"$gte": sequence}}
        )
        return result.deleted_count

    async def delete_thread(self, tenant: str, thread_id: str) -> int:
        result = await self._c.delete_many({"thread_id": thread_id, "tenant": tenant})
        return result.deleted_count
