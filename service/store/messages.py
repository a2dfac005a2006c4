"""Messages collection: per-thread sequence numbers without gaps."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.models import MemoryMode, Message, MessageStatus, Role, Usage

__all__ = ["MongoMessageStore"]

Doc = dict[str, Any]
_MAX_APPEND_ATTEMPTS = 64


def _to_doc(m: Message) -> Doc:
    return {
        "_id": m.message_id,
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
    }


def _usage_doc(usage: Usage | None) -> Doc | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _from_doc(d: Doc) -> Message:
    usage = d.get("usage")
    return Message(
        message_id=d["_id"],
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
    )


class MongoMessageStore:
    """``MessageStore`` over the messages collection (and the threads'
    ``message_count``)."""

    def __init__(self, collection: AsyncCollection[Doc], threads: AsyncCollection[Doc]) -> None:
        self._c = collection
        self._threads = threads

    async def append(self, message: Message) -> Message:
        """Insert at the next free sequence number.

        The unique (thread_id, sequence) index arbitrates between concurrent
        writers: the loser of a race gets a duplicate-key error and tries the
        next number. The number is read from the messages themselves, not a
        counter, so a writer that dies between steps leaves no gap.
        """
        last = await self._c.find_one(
            {"thread_id": message.thread_id},
            {"sequence": 1},
            sort=[("sequence", DESCENDING)],
        )
        sequence = int(last["sequence"]) + 1 if last else 0
        for _ in range(_MAX_APPEND_ATTEMPTS):
            message.sequence = sequence
            try:
                await self._c.insert_one(_to_doc(message))
                break
            except DuplicateKeyError:
                mine = await self._c.find_one({"_id": message.message_id}, {"sequence": 1})
                if mine is not None:  # a retried insert that had in fact landed
                    message.sequence = int(mine["sequence"])
                    sequence = message.sequence
                    break
                sequence += 1
        else:  # pragma: no cover - needs 64 writers racing on one thread
            raise RuntimeError(f"could not allocate a sequence number in {message.thread_id}")
        await self._threads.update_one(
            {"_id": message.thread_id, "tenant": message.tenant},
            {"$max": {"message_count": sequence + 1}, "$set": {"update_time": message.create_time}},
        )
        return message

    async def get(self, tenant: str, message_id: str) -> Message | None:
        doc = await self._c.find_one({"_id": message_id, "tenant": tenant})
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
    ) -> Message | None:
        doc = await self._c.find_one_and_update(
            {"_id": message_id, "tenant": tenant},
            {
                "$set": {
                    "content": content,
                    "status": status.value,
                    "usage": _usage_doc(usage),
                    "error": error,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        return _from_doc(doc) if doc else None

    async def save_progress(self, tenant: str, message_id: str, content: str) -> None:
        await self._c.update_one(
            {"_id": message_id, "tenant": tenant, "status": MessageStatus.IN_PROGRESS.value},
            {"$set": {"content": content}},
        )

    async def restart(self, tenant: str, message_id: str, model: str) -> bool:
        result = await self._c.update_one(
            {
                "_id": message_id,
                "tenant": tenant,
                "status": MessageStatus.FAILED.value,
                "content": "",
            },
            {"$set": {"status": MessageStatus.IN_PROGRESS.value, "model": model, "error": ""}},
        )
        return result.modified_count == 1

    async def find_page(
        self, tenant: str, thread_id: str, limit: int, after: int | None, descending: bool
    ) -> list[Message]:
        query: Doc = {"thread_id": thread_id, "tenant": tenant}
        if after is not None:
            query["sequence"] = {"$lt" if descending else "$gt": after}
        order = DESCENDING if descending else ASCENDING
        cursor = self._c.find(query).sort("sequence", order).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def history(self, tenant: str, thread_id: str, before: int) -> list[Message]:
        cursor = self._c.find(
            {"thread_id": thread_id, "tenant": tenant, "sequence": {"$lt": before}}
        ).sort("sequence", ASCENDING)
        return [_from_doc(d) async for d in cursor]

    async def mark_stale(self, tenant: str, thread_id: str) -> int:
        result = await self._c.update_many(
            {
                "thread_id": thread_id,
                "tenant": tenant,
                "status": MessageStatus.IN_PROGRESS.value,
            },
            {"$set": {"status": MessageStatus.INCOMPLETE.value, "error": "interrupted"}},
        )
        return result.modified_count

    async def delete_thread(self, tenant: str, thread_id: str) -> int:
        result = await self._c.delete_many({"thread_id": thread_id, "tenant": tenant})
        return result.deleted_count
