"""Assistants collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.models import Assistant, ContextStrategy, MemoryMode, ToolSpec
from service.store.order import NEWEST_FIRST, older_than
from service.store.scoped import key, object_id
from service.store.tooldocs import tool_doc, tool_from_doc

__all__ = ["MongoAssistantStore"]

Doc = dict[str, Any]
_LIVE = {"deleting": {"$ne": True}}


def _to_doc(a: Assistant) -> Doc:
    return {
        "_id": key(a.tenant, a.assistant_id),
        "tenant": a.tenant,
        "name": a.name,
        "instructions": a.instructions,
        "model": a.model,
        "memory_mode": a.memory_mode.value,
        "metadata": a.metadata,
        "create_time": a.create_time,
        "update_time": a.update_time,
        "context_window": a.context_window,
        "context_strategy": a.context_strategy.value,
        "tools": _tools_doc(a.tools),
        "memory_from_tool_outputs": a.memory_from_tool_outputs,
        "shared_memory_writes": a.shared_memory_writes,
    }


def _tools_doc(tools: list[ToolSpec]) -> list[Doc]:
    return [tool_doc(t) for t in tools]


def _from_doc(d: Doc) -> Assistant:
    return Assistant(
        assistant_id=object_id(d["_id"]),
        tenant=d["tenant"],
        name=d.get("name", ""),
        instructions=d.get("instructions", ""),
        model=d.get("model", ""),
        memory_mode=MemoryMode(d.get("memory_mode", MemoryMode.OFF.value)),
        metadata=dict(d.get("metadata") or {}),
        create_time=d.get("create_time"),
        update_time=d.get("update_time"),
        context_window=int(d.get("context_window", 0)),
        context_strategy=ContextStrategy(
            d.get("context_strategy", ContextStrategy.SUMMARIZE.value)
        ),
        tools=[tool_from_doc(t) for t in d.get("tools") or ()],
        memory_from_tool_outputs=bool(d.get("memory_from_tool_outputs", False)),
        shared_memory_writes=bool(d.get("shared_memory_writes", False)),
    )


class MongoAssistantStore:
    """``AssistantStore`` over one collection, keyed by tenant and id
    (``scoped.py``)."""

    def __init__(self, collection: AsyncCollection[Doc], defaults: AsyncCollection[Doc]) -> None:
        self._c = collection
        # Per tenant: one document naming its default assistant, and one per
        # default that was deleted and replaced, naming its successor.
        self._defaults = defaults

    async def insert(self, assistant: Assistant) -> None:
        await self._c.insert_one(_to_doc(assistant))

    async def get(self, tenant: str, assistant_id: str) -> Assistant | None:
        doc = await self._c.find_one({"_id": key(tenant, assistant_id)})
        if doc is None or doc.get("deleting"):
            return None
        return _from_doc(doc)

    async def default_id(self, tenant: str) -> str | None:
        doc = await self._defaults.find_one({"_id": tenant})
        return str(doc["assistant_id"]) if doc else None

    async def claim_default(self, tenant: str, assistant_id: str, replacing: str | None) -> str:
        if replacing is None:
            try:
                await self._defaults.insert_one({"_id": tenant, "assistant_id": assistant_id})
            except DuplicateKeyError:
                current = await self.default_id(tenant)
                return current or assistant_id
            return assistant_id
        successor = await self._succeed(tenant, replacing, assistant_id)
        # Only while the default is still the one replaced. MongoDB applies
        # the filter and the write as one step; FerretDB 1.x reads, filters,
        # then writes by _id alone, so a claim as slow as a whole later
        # deletion and claim could still point the tenant back at this
        # successor. The pointer is only a shortcut along the chain of
        # successions, which is what decides; such a stray pointer names a
        # deleted assistant, and the next claim that replaces it follows the
        # chain on from there.
        await self._defaults.update_one(
            {"_id": tenant, "assistant_id": replacing}, {"$set": {"assistant_id": successor}}
        )
        return await self.default_id(tenant) or successor

    async def _succeed(self, tenant: str, replaced: str, candidate: str) -> str:
        """The one successor of a tenant's deleted default: ``candidate`` if
        its claim is the first, else the claim that was. A unique insert
        decides, which is atomic on MongoDB and FerretDB alike (a filtered
        replace is not on FerretDB 1.x: see claim_default)."""
        # Tenant names have no '/', so this never meets a tenant's own _id.
        key = f"{tenant}/{replaced}"
        try:
            await self._defaults.insert_one({"_id": key, "assistant_id": candidate})
        except DuplicateKeyError:
            first = await self._defaults.find_one({"_id": key})
            if first is not None:
                return str(first["assistant_id"])
        return candidate

    async def find_page(
        self, tenant: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[Assistant]:
        last = key(tenant, after[1]) if after else ""
        query: Doc = {"tenant": tenant, **_LIVE} | older_than(after, last)
        cursor = self._c.find(query).sort(NEWEST_FIRST).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def update(
        self, tenant: str, assistant_id: str, changes: dict[str, object], now: datetime
    ) -> Assistant | None:
        values: Doc = {
            k: (v.value if isinstance(v, MemoryMode | ContextStrategy) else v)
            for k, v in changes.items()
        }
        if "tools" in values:
            values["tools"] = _tools_doc(changes["tools"])  # type: ignore[arg-type]
        values["update_time"] = now
        doc = await self._c.find_one_and_update(
            {"_id": key(tenant, assistant_id), **_LIVE},
            {"$set": values},
            return_document=ReturnDocument.AFTER,
        )
        return _from_doc(doc) if doc else None

    async def mark_deleting(self, tenant: str, assistant_id: str) -> bool:
        result = await self._c.update_one(
            {"_id": key(tenant, assistant_id), **_LIVE}, {"$set": {"deleting": True}}
        )
        return result.matched_count == 1

    async def delete(self, tenant: str, assistant_id: str) -> None:
        await self._c.delete_one({"_id": key(tenant, assistant_id)})

    async def pending_deletes(self) -> list[tuple[str, str]]:
        cursor = self._c.find({"deleting": True}, {"tenant": 1})
        return [(d["tenant"], object_id(d["_id"])) async for d in cursor]
