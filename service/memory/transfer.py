"""Moving an assistant's memories to another assistant or another Loom:
each memory, with its history, as one JSON object (a line of a JSON Lines
file: ``python -m service memory export``), and importing such objects by
batches (``memory import``).

A line holds what a memory is, never its vector (the importing Loom embeds
it with its own model): ``memory_id``, ``user_id``, ``kind``, ``content``,
``metadata``, ``context``, the source thread and message, the times (RFC
3339), the version and the change that made it, the invalidation and
replacement links, and ``history``, its earlier versions.

Both directions resume: an export appends the memories its file does not
hold yet, and an import writes only the memories the assistant does not
hold yet (by id), so running either again after an interruption finishes
the work without duplicates. Ids are kept, or with ``remap`` replaced by
ids derived from the target assistant and the old id (the same on every
run, and applied to the ``supersedes``/``superseded_by`` links too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from service.core import ids
from service.core.memory_history import MemoryHistoryStore, MemoryVersion
from service.memory.ports import CHANGES, MemoryIndex, MemoryRecord

__all__ = ["FORMAT", "export_memories", "from_json", "import_memories", "remapped", "to_json"]

FORMAT = "loom.memory.v1"  # each line's "format"
BATCH = 200  # memories read or written at once (and the resume granularity)

Advance = Callable[[int], None]


def remapped(tenant: str, assistant_id: str, memory_id: str) -> str:
    """The id a memory imported with ``remap`` gets in that assistant."""
    return ids.derived_id(ids.MEMORY, "import", tenant, assistant_id, memory_id)


def _time(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _version_json(v: MemoryVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "content": v.text,
        "metadata": v.metadata,
        "change": v.change,
        "change_time": _time(v.change_time),
        "operation_id": v.operation_id,
        "thread_id": v.thread_id,
        "message_id": v.message_id,
        "superseded_by": v.superseded_by,
    }


def to_json(record: MemoryRecord, history: Sequence[MemoryVersion]) -> dict[str, Any]:
    """A memory and its earlier versions as one JSON object."""
    return {
        "format": FORMAT,
        "memory_id": record.memory_id,
        "user_id": record.user_id,
        "kind": record.kind,
        "content": record.text,
        "metadata": record.metadata,
        "context": record.context,
        "source_thread_id": record.source_thread_id,
        "source_message_id": record.source_message_id,
        "create_time": _time(record.create_time),
        "update_time": _time(record.update_time),
        "version": record.version,
        "change": record.change,
        "operation_id": record.operation_id,
        "change_thread_id": record.change_thread_id,
        "change_message_id": record.change_message_id,
        "invalidate_time": _time(record.invalidate_time),
        "superseded_by": record.superseded_by,
        "supersedes": record.supersedes,
        "history": [_version_json(v) for v in history if v.version < record.version],
    }


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key) or ""
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def _moment(obj: Mapping[str, Any], key: str) -> datetime | None:
    raw = obj.get(key)
    if raw is None:
        return None
    moment = datetime.fromisoformat(str(raw))
    if moment.tzinfo is None:
        raise ValueError(f"{key} must carry a time zone")
    return moment


def _metadata(obj: Mapping[str, Any]) -> dict[str, str]:
    raw = obj.get("metadata") or {}
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise ValueError("metadata must map strings to strings")
    return dict(raw)


def from_json(
    obj: Mapping[str, Any], tenant: str, assistant_id: str, *, remap: bool
) -> tuple[MemoryRecord, list[MemoryVersion]]:
    """The memory (of ``assistant_id``) and the earlier versions a line holds.

    Raises:
        ValueError: not a memory of this format (the message says what).
    """
    if obj.get("format") != FORMAT:
        raise ValueError(f"not a memory of format {FORMAT!r}")

    def mid(value: str) -> str:
        return remapped(tenant, assistant_id, value) if remap and value else value

    memory_id = _text(obj, "memory_id")
    if not memory_id or not _text(obj, "content"):
        raise ValueError("memory_id and content are required")
    if _text(obj, "change") not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}")
    record = MemoryRecord(
        memory_id=mid(memory_id),
        tenant=tenant,
        assistant_id=assistant_id,
        user_id=_text(obj, "user_id"),
        text=_text(obj, "content"),
        kind=_text(obj, "kind"),
        source_thread_id=_text(obj, "source_thread_id"),
        source_message_id=_text(obj, "source_message_id"),
        create_time=_moment(obj, "create_time"),
        update_time=_moment(obj, "update_time"),
        metadata=_metadata(obj),
        context=_text(obj, "context"),
        version=int(obj.get("version") or 1),
        change=_text(obj, "change"),
        operation_id=_text(obj, "operation_id"),
        change_thread_id=_text(obj, "change_thread_id"),
        change_message_id=_text(obj, "change_message_id"),
        invalidate_time=_moment(obj, "invalidate_time"),
        superseded_by=mid(_text(obj, "superseded_by")),
        supersedes=mid(_text(obj, "supersedes")),
    )
    history = [
        MemoryVersion(
            memory_id=record.memory_id,
            version=int(v.get("version") or 0),
            text=_text(v, "content"),
            metadata=_metadata(v),
            change=_text(v, "change"),
            change_time=_moment(v, "change_time") or record.create_time or datetime.min,
            operation_id=_text(v, "operation_id"),
            thread_id=_text(v, "thread_id"),
            message_id=_text(v, "message_id"),
            superseded_by=mid(_text(v, "superseded_by")),
        )
        for v in obj.get("history") or []
    ]
    return record, history


async def export_memories(
    index: MemoryIndex,
    history: MemoryHistoryStore,
    tenant: str,
    assistant_id: str,
    *,
    skip: set[str],
    advance: Advance,
) -> AsyncIterator[dict[str, Any]]:
    """Every memory of the assistant (invalidated ones too) as a JSON
    object, but those whose ids are in ``skip``; ``advance`` is told of
    each batch, skipped memories included.

    Raises:
        Unavailable: Chroma or the database cannot be reached.
    """
    every = await index.memory_ids(tenant, assistant_id)
    advance(sum(1 for i in every if i in skip))
    wanted = [i for i in every if i not in skip]
    for start in range(0, len(wanted), BATCH):
        chunk = wanted[start : start + BATCH]
        records = await index.get_many(tenant, assistant_id, chunk)
        kept = await history.versions_of(tenant, assistant_id, list(records))
        for memory_id in chunk:
            if memory_id in records:  # else deleted since the ids were read
                yield to_json(records[memory_id], kept.get(memory_id, []))
        advance(len(chunk))


async def import_memories(
    index: MemoryIndex,
    history: MemoryHistoryStore,
    tenant: str,
    assistant_id: str,
    objects: Sequence[Mapping[str, Any]],
    *,
    remap: bool,
) -> int:
    """Write the memories of ``objects`` the assistant does not hold yet
    (their history first); how many were written.

    Raises:
        ValueError: a malformed object (nothing of the batch is written).
        EmbeddingMismatch: the assistant's memories use another model.
        Unavailable: Chroma or the database cannot be reached.
    """
    parsed = [from_json(o, tenant, assistant_id, remap=remap) for o in objects]
    held = await index.get_many(tenant, assistant_id, [r.memory_id for r, _ in parsed])
    fresh = [(r, h) for r, h in parsed if r.memory_id not in held]
    for record, versions in fresh:
        await history.add(tenant, assistant_id, record.source_thread_id, versions)
    await index.upsert([r for r, _ in fresh])
    return len(fresh)
