"""Memories' history as the store keeps it: an earlier version of a
memory (``MemoryVersion``) and the store port that keeps them
(``MemoryHistoryStore``, implemented over MongoDB by ``service.store``).
The memory domain (``service.memory.history``) decides what is kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["MemoryHistoryStore", "MemoryVersion"]


@dataclass(frozen=True, slots=True)
class MemoryVersion:
    """One earlier version of a memory, kept when it changed: its text and
    metadata then, and the change that had made it (``change``: created,
    updated, invalidated or restored; by the extraction ``operation_id``,
    in ``thread_id`` from ``message_id``, at ``change_time``)."""

    memory_id: str
    version: int
    text: str
    metadata: dict[str, str]
    change: str
    change_time: datetime
    operation_id: str = ""
    thread_id: str = ""
    message_id: str = ""
    superseded_by: str = ""


class MemoryHistoryStore(Protocol):
    """Earlier versions of memories, by (tenant, assistant, memory); a
    memory's whole history goes with it."""

    async def add(
        self,
        tenant: str,
        assistant_id: str,
        source_thread_id: str,
        versions: Sequence[MemoryVersion],
    ) -> None:
        """Keep these versions (of memories learnt in ``source_thread_id``);
        adding a version that is already kept, unchanged, changes nothing."""

    async def versions(self, tenant: str, assistant_id: str, memory_id: str) -> list[MemoryVersion]:
        """The memory's kept versions, oldest first."""

    async def versions_of(
        self, tenant: str, assistant_id: str, memory_ids: Sequence[str]
    ) -> dict[str, list[MemoryVersion]]:
        """The kept versions of each of those memories that has any, oldest first."""

    async def delete(self, tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> None:
        """Forget the history of those memories."""

    async def delete_thread(self, tenant: str, assistant_id: str, thread_id: str) -> None:
        """Forget the history of every memory learnt in the thread."""

    async def delete_assistant(self, tenant: str, assistant_id: str) -> None:
        """Forget the history of every memory of the assistant."""
