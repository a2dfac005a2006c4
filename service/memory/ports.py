"""The memory index as the memory domain sees it: the ``MemoryIndex`` port,
the records it stores and the hits it finds, and the shared write counter
an index may be backed by (``VersionSource``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from service.core.filtering import Filter

__all__ = [
    "CHANGES",
    "EPISODIC",
    "FACT",
    "MANUAL",
    "MODES",
    "MemoryHit",
    "MemoryIndex",
    "MemoryRecord",
    "VersionSource",
]

MODES = ("hybrid", "dense", "lexical")  # a search's ``mode``: both signals, or one
# What made a version of a memory (``MemoryRecord.change``).
CHANGES = ("created", "updated", "invalidated", "restored")
# Where a memory came from (``MemoryRecord.kind``): a user's message as
# said, a fact the model extracted, or one written through MemoryService.
EPISODIC = "episodic"
FACT = "fact"
MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class MemoryRecord:
    """One memory as stored, in its current version.

    ``context`` is text indexed with the memory to help find it but never
    part of it (for an episodic message: the turns around it); search
    returns it on the record but callers inject ``text`` only.

    History: ``version`` counts the changes (1 when created); ``change``
    says what made this version (``CHANGES``), and ``operation_id``,
    ``change_thread_id`` and ``change_message_id`` who (the extraction
    operation, the thread and the message; empty for API calls). Earlier
    versions are in the history store. An invalidated memory (a newer fact
    contradicted or replaced it) has ``invalidate_time`` and, if a memory
    replaced it, ``superseded_by``; searches and lists skip it unless asked.
    """

    memory_id: str
    tenant: str
    assistant_id: str
    user_id: str  # "" = assistant-wide
    text: str
    kind: str  # EPISODIC, FACT or MANUAL
    source_thread_id: str = ""
    source_message_id: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    context: str = ""
    version: int = 1
    change: str = "created"
    operation_id: str = ""
    change_thread_id: str = ""
    change_message_id: str = ""
    invalidate_time: datetime | None = None
    superseded_by: str = ""
    supersedes: str = ""


@dataclass(frozen=True, slots=True)
class MemoryHit:
    """A memory found by a search, with the signals that ranked it."""

    record: MemoryRecord
    score: float  # the ranking score, higher is better (``service.memory.ranking``)
    dense: float | None  # cosine similarity (None in lexical mode)
    lexical: float | None  # raw BM25 when the query shares a term with it, else None


class MemoryIndex(Protocol):
    """What the memory domain needs from the index; every call is scoped to
    one tenant and assistant."""

    async def upsert(self, records: Sequence[MemoryRecord]) -> None:
        """Add or replace records by memory id (re-embedding them)."""

    async def get(self, tenant: str, assistant_id: str, memory_id: str) -> MemoryRecord | None:
        """The record, or None."""

    async def get_many(
        self, tenant: str, assistant_id: str, memory_ids: Sequence[str]
    ) -> dict[str, MemoryRecord]:
        """The records of those ids that exist, by id."""

    async def list_records(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str | None,
        limit: int,
        offset: int,
        *,
        include_invalidated: bool = False,
        matching: Filter | None = None,
    ) -> list[MemoryRecord]:
        """A page in (create_time, memory_id) order; user_id None = every
        user, "" = assistant-wide only, else that user's only; invalidated
        memories only when asked; only those ``matching`` the filter."""

    async def delete(self, tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> int:
        """Delete those records; how many existed."""

    async def delete_where(
        self,
        tenant: str,
        assistant_id: str,
        *,
        user_id: str | None = None,
        source_thread_id: str | None = None,
    ) -> int:
        """Delete every record matching all the given filters (at least one)."""

    async def drop_assistant(self, tenant: str, assistant_id: str) -> None:
        """Delete every record of the assistant."""

    async def search(
        self,
        tenant: str,
        assistant_id: str,
        query: str,
        *,
        user_id: str,
        limit: int,
        min_score: float = 0.0,
        mode: str = "hybrid",
        include_invalidated: bool = False,
        matching: Filter | None = None,
    ) -> list[MemoryHit]:
        """The best ``limit`` memories of ``user_id`` and assistant-wide ones
        (only assistant-wide ones when user_id is "") scoring at least
        ``min_score``, best first; ``mode`` is one of ``MODES``. Invalidated
        memories only when asked; only those ``matching`` the filter."""

    async def nearest(
        self, tenant: str, assistant_id: str, user_id: str, text: str, k: int
    ) -> list[MemoryHit]:
        """The ``k`` valid memories of exactly ``user_id`` nearest to
        ``text`` by cosine."""

    async def count(self, tenant: str, assistant_id: str) -> int:
        """How many memories the assistant has."""

    async def memory_ids(self, tenant: str, assistant_id: str) -> list[str]:
        """The id of every memory of the assistant, invalidated ones too."""


class VersionSource(Protocol):
    """A write counter per (tenant, assistant), shared by every replica."""

    async def current(self, tenant: str, assistant_id: str) -> int:
        """The counter (0 before any write)."""

    async def bump(self, tenant: str, assistant_id: str) -> int:
        """Add one and return the new value."""
