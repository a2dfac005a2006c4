"""Earlier versions of memories: the audit log behind ListMemoryHistory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection

from service.core.memory_history import MemoryVersion

__all__ = ["MongoMemoryHistory"]

Doc = dict[str, Any]


def _key(tenant: str, assistant_id: str, memory_id: str) -> str:
    return f"{tenant}\x1f{assistant_id}\x1f{memory_id}"


def _to_doc(v: MemoryVersion) -> Doc:
    return {
        "version": v.version,
        "text": v.text,
        "metadata": dict(v.metadata),
        "change": v.change,
        "change_time": v.change_time,
        "operation_id": v.operation_id,
        "thread_id": v.thread_id,
        "message_id": v.message_id,
        "superseded_by": v.superseded_by,
    }


def _among(tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> Doc:
    """The filter for those memories' histories. FerretDB 1.x pushes no
    ``$in`` down, so the equality on tenant and assistant is what reaches
    an index there (MongoDB serves the ``$in`` on ``_id`` itself)."""
    keys = [_key(tenant, assistant_id, m) for m in memory_ids]
    return {"tenant": tenant, "assistant_id": assistant_id, "_id": {"$in": keys}}


def _from_doc(memory_id: str, d: Doc) -> MemoryVersion:
    return MemoryVersion(
        memory_id=memory_id,
        version=int(d["version"]),
        text=str(d.get("text", "")),
        metadata=dict(d.get("metadata") or {}),
        change=str(d.get("change", "")),
        change_time=d["change_time"],
        operation_id=str(d.get("operation_id", "")),
        thread_id=str(d.get("thread_id", "")),
        message_id=str(d.get("message_id", "")),
        superseded_by=str(d.get("superseded_by", "")),
    )


def _versions(doc: Doc) -> list[MemoryVersion]:
    """A memory's versions, oldest first, the first of each number kept."""
    kept: dict[int, MemoryVersion] = {}
    for item in doc.get("versions") or []:
        version = _from_doc(str(doc["memory_id"]), item)
        kept.setdefault(version.version, version)
    return [kept[n] for n in sorted(kept)]


class MongoMemoryHistory:
    """``MemoryHistoryStore``: one document per memory with a history,
    keyed by (tenant, assistant, memory) in ``_id``, its versions in an
    array. Reading a memory's history is one read by ``_id`` (the only
    filter FerretDB 1.x pushes down to SQLite); a version is added with
    ``$addToSet``, so a retried write of the same version adds nothing. Two
    writers changing one memory at the same instant can both add a version
    of one number (no transactions); readers keep the first."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def add(
        self,
        tenant: str,
        assistant_id: str,
        source_thread_id: str,
        versions: Sequence[MemoryVersion],
    ) -> None:
        if not versions:
            return
        await self._c.bulk_write(
            [
                UpdateOne(
                    {"_id": _key(tenant, assistant_id, v.memory_id)},
                    {
                        "$setOnInsert": {
                            "tenant": tenant,
                            "assistant_id": assistant_id,
                            "memory_id": v.memory_id,
                            "source_thread_id": source_thread_id,
                        },
                        "$addToSet": {"versions": _to_doc(v)},
                    },
                    upsert=True,
                )
                for v in versions
            ],
            ordered=False,
        )

    async def versions(self, tenant: str, assistant_id: str, memory_id: str) -> list[MemoryVersion]:
        doc = await self._c.find_one({"_id": _key(tenant, assistant_id, memory_id)})
        return [] if doc is None or doc.get("tenant") != tenant else _versions(doc)

    async def versions_of(
        self, tenant: str, assistant_id: str, memory_ids: Sequence[str]
    ) -> dict[str, list[MemoryVersion]]:
        wanted = list(dict.fromkeys(memory_ids))
        out: dict[str, list[MemoryVersion]] = {}
        for start in range(0, len(wanted), 1000):
            async for doc in self._c.find(
                _among(tenant, assistant_id, wanted[start : start + 1000])
            ):
                out[str(doc["memory_id"])] = _versions(doc)
        return out

    async def delete(self, tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> None:
        wanted = list(dict.fromkeys(memory_ids))
        for start in range(0, len(wanted), 1000):
            await self._c.delete_many(_among(tenant, assistant_id, wanted[start : start + 1000]))

    async def delete_thread(self, tenant: str, assistant_id: str, thread_id: str) -> None:
        await self._c.delete_many(
            {"tenant": tenant, "assistant_id": assistant_id, "source_thread_id": thread_id}
        )

    async def delete_assistant(self, tenant: str, assistant_id: str) -> None:
        await self._c.delete_many({"tenant": tenant, "assistant_id": assistant_id})
