"""How a memory is stored in Chroma: a ``MemoryRecord`` as a record's
metadata and back, and the filters that scope a read.

A memory is one record: id = memory id, embedding = given by Loom, no
document, metadata = ``text``, ``tenant``, ``assistant_id``, ``user_id``,
``kind``, ``source_thread_id``, ``source_message_id``, ``context``,
``create_us``/``update_us`` (UTC microseconds), ``write_us`` (when it was
written), the version and its change (``version``, ``change``,
``change_op``, ``change_thread``, ``change_message``), when set
``invalidate_us``, ``superseded_by`` and ``supersedes``, and the caller's
metadata under ``m.<key>``. A field at its default (empty, version 1,
change "created", ``update_us`` equal to ``create_us``) is not stored.

The text is metadata, not Chroma's document, because Chroma full-text
indexes every document on write (a third of the cost of writing a short
memory) and Loom never searches that index: it ranks lexically in its own
caches. Records written before keep their text as the document, and are
read as before (``stored_text``); rewriting one moves its text to the
metadata, where it takes precedence over the document it leaves behind.

Scopes. The search caches index each memory under a scope string: its
user id ("" for assistant-wide), prefixed with ``INVALIDATED`` when it was
invalidated, so a search sees (and ranks among) valid memories unless it
asks for invalidated ones too (``cache_scope``, ``scopes_of``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeGuard

from service.memory.ports import MemoryRecord

if TYPE_CHECKING:
    from chromadb.api.types import Where
    from chromadb.base_types import LiteralValue, LogicalOperator, WhereOperator

__all__ = [
    "INVALIDATED",
    "belongs",
    "cache_scope",
    "created_us",
    "in_scope",
    "now_us",
    "replacing",
    "scopes_of",
    "stored_text",
    "to_metadata",
    "to_record",
    "updated_us",
    "where",
    "written_since",
]

_META_PREFIX = "m."
_TEXT = "text"
INVALIDATED = "\x00invalidated\x00"  # scope prefix; no user id holds a NUL


def now_us() -> int:
    """The wall clock in UTC microseconds (a record's ``write_us``)."""
    return time.time_ns() // 1000


def _micros(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def _moment(value: object) -> datetime | None:
    if not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def to_metadata(record: MemoryRecord) -> dict[str, str | int]:
    """The record's Chroma metadata, ``write_us`` aside."""
    meta: dict[str, str | int] = {
        _META_PREFIX + key: value for key, value in record.metadata.items()
    }
    meta.update(
        text=record.text,
        tenant=record.tenant,
        assistant_id=record.assistant_id,
        user_id=record.user_id,
        kind=record.kind,
    )
    # A field at its default is left out (``to_record`` restores it): Chroma
    # writes a metadata row per key, and a manual memory has none of these.
    for key, value in (
        ("source_thread_id", record.source_thread_id),
        ("source_message_id", record.source_message_id),
        ("context", record.context),
        ("version", 0 if record.version == 1 else record.version),
        ("change", "" if record.change == "created" else record.change),
        ("change_op", record.operation_id),
        ("change_thread", record.change_thread_id),
        ("change_message", record.change_message_id),
        ("superseded_by", record.superseded_by),
        ("supersedes", record.supersedes),
    ):
        if value:
            meta[key] = value
    for key, moment in (
        ("create_us", record.create_time),
        ("update_us", record.update_time),
        ("invalidate_us", record.invalidate_time),
    ):
        micros = _micros(moment)
        if micros is not None:
            meta[key] = micros
    if "update_us" in meta and meta["update_us"] == meta.get("create_us"):
        del meta["update_us"]  # never updated: ``updated_us`` reads it back
    return meta


def replacing(
    new: Mapping[str, str | int], old: Mapping[str, object] | None
) -> dict[str, str | int | None]:
    """``new`` with every key only ``old`` has set to None: Chroma's upsert
    merges a record's metadata into what it holds, and deletes a key given
    as None, so this is how a write replaces the metadata whole."""
    removed: dict[str, str | int | None] = {key: None for key in old or {} if key not in new}
    return removed | dict(new)


def to_record(
    memory_id: str, document: str | None, meta: Mapping[str, object] | None
) -> MemoryRecord:
    """The record Chroma holds under ``memory_id``."""
    meta = meta or {}
    return MemoryRecord(
        memory_id=memory_id,
        tenant=str(meta.get("tenant", "")),
        assistant_id=str(meta.get("assistant_id", "")),
        user_id=str(meta.get("user_id", "")),
        text=stored_text(document, meta),
        kind=str(meta.get("kind", "")),
        source_thread_id=str(meta.get("source_thread_id", "")),
        source_message_id=str(meta.get("source_message_id", "")),
        create_time=_moment(meta.get("create_us")),
        update_time=_moment(updated_us(meta)),
        metadata={
            key[len(_META_PREFIX) :]: str(value)
            for key, value in meta.items()
            if key.startswith(_META_PREFIX)
        },
        context=str(meta.get("context", "")),
        version=_int(meta.get("version"), 1),
        change=str(meta.get("change", "created")),
        operation_id=str(meta.get("change_op", "")),
        change_thread_id=str(meta.get("change_thread", "")),
        change_message_id=str(meta.get("change_message", "")),
        invalidate_time=_moment(meta.get("invalidate_us")),
        superseded_by=str(meta.get("superseded_by", "")),
        supersedes=str(meta.get("supersedes", "")),
    )


def stored_text(document: str | None, meta: Mapping[str, object] | None) -> str:
    """A record's text: its ``text`` metadata, else (a record written
    before the text moved there) its document."""
    text = (meta or {}).get(_TEXT)
    return text if isinstance(text, str) else document or ""


def updated_us(meta: Mapping[str, object]) -> object:
    """A record's ``update_us``, which is left out while it equals ``create_us``."""
    return meta.get("update_us", meta.get("create_us"))


def _int(value: object, default: int) -> int:
    return int(value) if isinstance(value, int | float) else default


def created_us(meta: Mapping[str, object] | None) -> int:
    """A record's ``create_us`` (0 if it has none): what listings sort on."""
    return _int((meta or {}).get("create_us"), 0)


def where(tenant: str, assistant_id: str, **equal: str | None) -> Where:
    """A Chroma filter: the tenant's and assistant's records whose fields
    equal the given values (a None value is no condition)."""
    clauses: list[Where] = [{"tenant": tenant}, {"assistant_id": assistant_id}]
    clauses += [{key: value} for key, value in equal.items() if value is not None]
    return {"$and": clauses}


def written_since(micros: int) -> Where:
    """A Chroma filter: the records written at ``micros`` or later."""
    at_least: dict[WhereOperator | LogicalOperator, LiteralValue] = {"$gte": micros}
    return {"write_us": at_least}


def scopes_of(user_id: str, *, invalidated: bool = False) -> list[str]:
    """The cache scopes a search in ``user_id``'s scope sees: theirs and the
    assistant-wide "" (only "" for a search without a user), and with
    ``invalidated`` their invalidated memories too."""
    users = [""] if user_id == "" else [user_id, ""]
    return users + [INVALIDATED + u for u in users] if invalidated else users


def cache_scope(meta: Mapping[str, object]) -> str:
    """The scope a record is cached under: its user id, marked when invalidated."""
    user_id = str(meta.get("user_id", ""))
    return INVALIDATED + user_id if "invalidate_us" in meta else user_id


def in_scope(meta: Mapping[str, object], scopes: list[str]) -> bool:
    """Whether Chroma's metadata of a record puts it in one of ``scopes``."""
    return cache_scope(meta) in scopes


def belongs(
    meta: Mapping[str, object] | None, tenant: str, assistant_id: str
) -> TypeGuard[Mapping[str, object]]:
    """Whether a record's metadata says it is of that tenant and assistant."""
    return (
        meta is not None
        and meta.get("tenant") == tenant
        and meta.get("assistant_id") == assistant_id
    )
