"""The thread and message stores the domain needs (re-exported by
``service.core.ports``, where the domain imports them from)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.core.filtering import Comparison
from service.core.models import (
    ContextEntry,
    Message,
    MessageStatus,
    PendingRun,
    Summary,
    Thread,
    ToolCall,
    Usage,
)

__all__ = ["MessageStore", "PendingThreadDelete", "ThreadClaim", "ThreadStore"]


@dataclass(frozen=True, slots=True)
class PendingThreadDelete:
    """A thread deletion a crash interrupted."""

    tenant: str
    assistant_id: str
    thread_id: str
    forget: bool


@dataclass(frozen=True, slots=True)
class ThreadClaim:
    """What ``ThreadStore.claim`` did.

    Fencing: every write made under a thread's lease (the thread's context
    and count, its messages' progress and final state) carries the lease's
    epoch and is refused by the store once a larger epoch has written the
    document: each write checks it itself (``{fence: {$not: {$gt: epoch}}}``
    in the update's filter, one document, so exact on MongoDB; FerretDB 1.x
    reads, then writes by ``_id``, so there the check narrows what is left
    to a stale holder whose write falls in that gap). A holder claims the
    thread first, which fences out every earlier holder's thread writes.

    ``thread`` is the thread as it was just before the claim (with
    ``replying`` set when an earlier holder started a reply and never wrote
    its end: a crash or an outage to recover from); None when the claim
    was refused, then ``fence`` is the larger epoch that wrote it, or 0
    when the thread is gone."""

    thread: Thread | None
    fence: int = 0


class ThreadStore(Protocol):
    """Threads, always scoped to a tenant: every read and write names it, so
    another tenant's thread is never read, not even to be refused. A thread
    being deleted, or past
    its ``expire_time``, is not returned by any read. Updates that may meet
    a reply's are made by the holder of the thread's lease: FerretDB 1.x
    loses one of two concurrent updates of a document, even of different
    fields."""

    async def insert(self, thread: Thread) -> None: ...
    async def get(self, tenant: str, thread_id: str) -> Thread | None: ...
    async def find_page(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        limit: int,
        after: tuple[datetime, str] | None,
        where: Sequence[Comparison] = (),
    ) -> list[Thread]:
        """Threads newest first (by create_time, then id), after ``after``
        (the create_time and id of the last thread of the previous page),
        matching every comparison."""

    async def update(
        self, tenant: str, thread_id: str, changes: dict[str, object], update_time: datetime
    ) -> Thread | None:
        """Set the fields in ``changes``; None if there is no such thread."""

    async def add_usage(self, tenant: str, thread_id: str, usage: Usage) -> None:
        """Add ``usage`` to the tokens the thread's background jobs spent
        (kept apart from the thread; one writer at a time, see ``Ledger``)."""

    async def job_usage(self, tenant: str, thread_ids: Sequence[str]) -> dict[str, Usage]:
        """The tokens the threads' background jobs spent, by thread id
        (threads without any are left out)."""

    async def mark_batch(self, tenant: str, thread_id: str, start: int | None) -> None:
        """Note that messages from sequence ``start`` on belong to a batch not
        finished yet (None: no such batch); written by the lease holder."""

    async def claim_expired(
        self, tenant: str, thread_id: str, at: datetime
    ) -> PendingThreadDelete | None:
        """Hide the thread for deletion if it had expired by ``at`` (and its
        expiration did not change meanwhile); None otherwise."""

    async def ids_of_assistant(self, tenant: str, assistant_id: str) -> list[str]: ...
    async def mark_deleting(self, tenant: str, thread_id: str, forget: bool = False) -> bool:
        """Hide the thread from reads, noting whether its memories go too."""

    async def delete(self, tenant: str, thread_id: str) -> None: ...
    async def pending_deletes(self) -> list[PendingThreadDelete]: ...
    async def claim(self, tenant: str, thread_id: str, epoch: int) -> ThreadClaim:
        """Fence the thread on the lease ``epoch`` its caller holds and mark
        a reply started (``Thread.replying``), unless a holder with a larger
        epoch wrote it already; see ``ThreadClaim``."""

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
        """Store the thread's cached context, message count and pending run,
        close its open batch, add ``usage`` to its totals, and note whether a
        reply is still unfinished on it (``Thread.replying``), fenced on
        ``epoch`` (see ``ThreadClaim``); False if a holder with a larger epoch
        wrote the thread since (or it is gone)."""

    async def unfinished(self, limit: int) -> list[tuple[str, str]]:
        """(tenant, thread_id) of threads marked mid-reply (``Thread.replying``),
        for the sweep that settles replies whose holder died."""

    async def end_claim(self, tenant: str, thread_id: str, *, epoch: int) -> bool:
        """Mark no reply unfinished (after a claim that wrote nothing
        else), fenced on ``epoch``."""

    async def save_summary(
        self,
        tenant: str,
        thread_id: str,
        summary: Summary,
        context: Sequence[ContextEntry],
        *,
        epoch: int,
    ) -> bool:
        """Store a new rolling summary and the context left after it, fenced
        on ``epoch`` as ``save_context``."""


class MessageStore(Protocol):
    """Messages, always scoped to a tenant and a thread: every read and
    write names the tenant."""

    async def append(self, message: Message, first_try: int) -> Message:
        """Store ``message`` at the thread's next sequence number, trying
        ``first_try`` first (the thread's message count). A unique index on
        (thread_id, sequence) settles races: no gaps, no duplicates, even with
        concurrent writers on several replicas."""

    async def append_all(
        self, messages: list[Message], first_try: int, *, epoch: int = 0
    ) -> list[Message]:
        """``append`` each message in turn (consecutive numbers if free),
        fenced on the lease ``epoch`` of their writer (see ``ThreadClaim``)."""

    async def get(self, tenant: str, message_id: str) -> Message | None: ...
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
        """Store a message's final state, fenced on ``epoch``; None if a
        holder with a larger epoch wrote it since, or it is gone."""

    async def save_progress(
        self, tenant: str, message_id: str, content: str, *, epoch: int
    ) -> bool:
        """Store what a streaming message holds so far, fenced on ``epoch``;
        False if refused or gone."""

    async def restart(self, tenant: str, message_id: str, model: str, *, epoch: int) -> bool:
        """Put a FAILED, empty message back IN_PROGRESS for a retry (fenced
        on ``epoch``)."""

    async def find_page(
        self,
        tenant: str,
        thread_id: str,
        limit: int,
        after: int | None,
        descending: bool,
        before: int | None = None,
    ) -> list[Message]:
        """Messages in sequence order after ``after``, and with sequence
        below ``before`` if given."""

    async def history(self, tenant: str, thread_id: str, before: int) -> list[Message]:
        """Messages with sequence below ``before``, oldest first."""

    async def delete_from(self, tenant: str, thread_id: str, sequence: int) -> int:
        """Delete the thread's messages from ``sequence`` on (a batch rolled back)."""

    async def delete_thread(self, tenant: str, thread_id: str) -> int: ...
