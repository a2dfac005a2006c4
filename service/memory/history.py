"""A memory's history: every change keeps the version it replaces, and a
memory's versions can be listed (the kept ones, then the current one).

Where it lives. The current version of a memory is its record in Chroma
(what searches read), with the number of its version and the change that
made it in the record's metadata. Earlier versions are kept in MongoDB
(``MemoryHistoryStore``), an audit log read only by ListMemoryHistory and
export: it never slows a search, it costs nothing until a memory first
changes (creating a memory writes no history), and MongoDB deletes a
memory's whole history in one call when the memory is forgotten.

Order of writes, without transactions: a change first keeps the old
version (idempotent: the same version kept twice is kept once), then
writes the new one; a crash in between leaves the memory unchanged and its
history holding a copy of the current version, which listings skip.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from service.core.memory_history import MemoryHistoryStore, MemoryVersion
from service.memory.ports import MemoryIndex, MemoryRecord

__all__ = ["History", "next_version", "snapshot"]


def snapshot(record: MemoryRecord) -> MemoryVersion:
    """The record's current version, as the history keeps it."""
    return MemoryVersion(
        memory_id=record.memory_id,
        version=record.version,
        text=record.text,
        metadata=dict(record.metadata),
        change=record.change,
        change_time=record.update_time or record.create_time or datetime.min,
        operation_id=record.operation_id,
        thread_id=record.change_thread_id,
        message_id=record.change_message_id,
        superseded_by=record.superseded_by,
    )


def next_version(
    record: MemoryRecord,
    change: str,
    at: datetime,
    *,
    operation_id: str = "",
    thread_id: str = "",
    message_id: str = "",
    **fields: Any,
) -> MemoryRecord:
    """The record's next version: ``fields`` changed by ``change`` at ``at``
    (by the operation, thread and message named, if any)."""
    return replace(
        record,
        version=record.version + 1,
        change=change,
        update_time=at,
        operation_id=operation_id,
        change_thread_id=thread_id,
        change_message_id=message_id,
        **fields,
    )


class History:
    """Changes of memories with their history kept, over the index and the
    history store."""

    def __init__(self, index: MemoryIndex, store: MemoryHistoryStore) -> None:
        self._index = index
        self._store = store

    async def change(self, pairs: list[tuple[MemoryRecord, MemoryRecord]]) -> None:
        """Replace each (old, new) record, keeping the old versions first.

        Raises:
            Unavailable: Chroma or the database cannot be reached.
        """
        by_scope: dict[tuple[str, str, str], list[MemoryVersion]] = {}
        for old, _ in pairs:
            key = (old.tenant, old.assistant_id, old.source_thread_id)
            by_scope.setdefault(key, []).append(snapshot(old))
        for (tenant, assistant_id, thread_id), versions in by_scope.items():
            await self._store.add(tenant, assistant_id, thread_id, versions)
        await self._index.upsert([new for _, new in pairs])

    async def versions(self, record: MemoryRecord) -> list[MemoryVersion]:
        """Every version of the memory, oldest first, the current one last."""
        kept = await self._store.versions(record.tenant, record.assistant_id, record.memory_id)
        return [v for v in kept if v.version < record.version] + [snapshot(record)]

    async def forget(self, tenant: str, assistant_id: str, memory_ids: list[str]) -> None:
        """Delete those memories for good, their history first (so that a
        crash part-way never leaves history without its memory)."""
        await self._store.delete(tenant, assistant_id, memory_ids)
        await self._index.delete(tenant, assistant_id, memory_ids)
        # A change that landed in between kept a version: forget it too.
        await self._store.delete(tenant, assistant_id, memory_ids)

    async def forget_thread(self, tenant: str, assistant_id: str, thread_id: str) -> int:
        """Delete every memory learnt in the thread, with its history; how many."""
        await self._store.delete_thread(tenant, assistant_id, thread_id)
        count = await self._index.delete_where(tenant, assistant_id, source_thread_id=thread_id)
        await self._store.delete_thread(tenant, assistant_id, thread_id)
        return count

    async def forget_assistant(self, tenant: str, assistant_id: str) -> None:
        """Delete every memory of the assistant, with its history."""
        await self._store.delete_assistant(tenant, assistant_id)
        await self._index.drop_assistant(tenant, assistant_id)
        await self._store.delete_assistant(tenant, assistant_id)
