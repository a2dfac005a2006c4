"""Every write made under a thread's lease (``ThreadWrites``), and the writes
of one reply: its progress while it streams and its final state
(``ReplyWriter``).

Nothing else in the reply loop writes a thread's messages or its cached
context, so a fence on the lease (a lease epoch that each write checks) has
one place to go: ``ThreadWrites``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from service.core.budget import with_tokens
from service.core.clock import now
from service.core.context import merge
from service.core.errors import NotFound
from service.core.leases import Lease
from service.core.models import (
    ContextEntry,
    Message,
    MessageStatus,
    PendingRun,
    Thread,
    ToolCall,
    Usage,
)
from service.core.ports import ChatChunk, MessageStore, ThreadStore, TokenCounter

__all__ = ["Received", "ReplyWriter", "ThreadWrites"]


class ThreadWrites:
    """The writes to one thread while its lease is held: appending messages,
    a message's progress and final state, and the thread's cached context,
    message count and pending run. ``thread`` is kept as written; ``lease``
    is the lease they are made under (what a fence will check)."""

    def __init__(
        self,
        *,
        messages: MessageStore,
        threads: ThreadStore,
        counter: TokenCounter,
        context_chars: int,
        thread: Thread,
        lease: Lease,
    ) -> None:
        self._messages = messages
        self._threads = threads
        self._counter = counter
        self._context_chars = context_chars
        self.thread = thread
        self.lease = lease

    async def append(self, messages: list[Message]) -> list[Message]:
        """Store ``messages`` at the thread's next sequence numbers and count
        them on ``thread`` (the count is written with the context)."""
        stored = await self._messages.append_all(messages, self.thread.message_count)
        self.thread.message_count = stored[-1].sequence + 1
        return stored

    async def save_progress(self, message_id: str, content: str) -> None:
        """Save what a streaming message holds so far."""
        await self._messages.save_progress(self.thread.tenant, message_id, content)

    async def finish(
        self,
        message_id: str,
        *,
        content: str,
        status: MessageStatus,
        usage: Usage | None = None,
        error: str = "",
        tool_calls: Sequence[ToolCall] = (),
    ) -> Message | None:
        """Store a message's final state; None if it is gone (its thread was
        deleted)."""
        return await self._messages.finish(
            self.thread.tenant,
            message_id,
            content=content,
            status=status,
            usage=usage,
            error=error,
            tool_calls=tool_calls,
        )

    async def restart(self, tenant: str, message_id: str, model: str) -> bool:
        """Put a FAILED, empty message back IN_PROGRESS for a retry."""
        return await self._messages.restart(tenant, message_id, model)

    async def cache(self, entries: Iterable[ContextEntry]) -> None:
        """Add ``entries`` to the thread's context in memory only; the next
        ``save`` writes them."""
        counted = [await with_tokens(e, self._counter) for e in entries]
        self.thread.context = merge(self.thread.context, counted, self._context_chars)

    async def save(
        self, entries: Iterable[ContextEntry], run: PendingRun | None, usage: Usage | None = None
    ) -> None:
        """Add ``entries`` to the thread's context and write it with the
        message count and ``run``, the run left waiting for tool outputs,
        closing an open batch and adding ``usage`` to the thread's totals."""
        await self.cache(entries)
        self.thread.run = run
        self.thread.open_batch = None
        t = self.thread
        t.update_time = now()
        await self._threads.save_context(
            t.tenant, t.thread_id, t.context, t.message_count, t.update_time, t.run, usage
        )

    async def open_batch(self) -> int:
        """Note that the messages appended from now until the next ``save``
        are one batch, hidden from readers until then; return its first
        sequence number."""
        start = self.thread.message_count
        await self._threads.mark_batch(self.thread.tenant, self.thread.thread_id, start)
        self.thread.open_batch = start
        return start

    async def roll_back(self, tenant: str) -> None:
        """Delete the messages of the thread's open batch and close it."""
        start = self.thread.open_batch
        if start is None:
            return
        await self._messages.delete_from(tenant, self.thread.thread_id, start)
        await self._threads.mark_batch(self.thread.tenant, self.thread.thread_id, None)
        self.thread.open_batch = None
        self.thread.message_count = min(self.thread.message_count, start)

    async def rebuild(self, entries: Iterable[ContextEntry], message_count: int) -> None:
        """Replace the thread's context and count with ones rebuilt from its
        messages (keeping its pending run) and write them."""
        self.thread.context = []
        self.thread.message_count = message_count
        await self.save(entries, self.thread.run)


@dataclass(slots=True)
class Received:
    """What the model has sent so far for one reply."""

    parts: list[str] = field(default_factory=list)
    calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def add(self, chunk: ChatChunk) -> str:
        """Take in ``chunk``; return its text."""
        self.usage = chunk.usage or self.usage
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.calls = chunk.tool_calls or self.calls
        if chunk.text:
            self.parts.append(chunk.text)
        return chunk.text


class ReplyWriter:
    """One reply's writes: what the model sent, saved every
    ``flush_interval`` seconds while it streams, and the reply's final state
    with the run it leaves waiting on the thread, if any."""

    def __init__(self, writes: ThreadWrites, reply: Message, flush_interval: float) -> None:
        self._writes = writes
        self._flush_interval = flush_interval
        self._last_save = time.monotonic()
        self.reply = reply
        self.received = Received()

    @property
    def thread(self) -> Thread:
        """The reply's thread, as written."""
        return self._writes.thread

    async def checkpoint(self) -> None:
        """Save the text received so far, if ``flush_interval`` has passed
        since the last save."""
        if time.monotonic() - self._last_save >= self._flush_interval:
            self._last_save = time.monotonic()
            await self._writes.save_progress(self.reply.message_id, self.received.text)

    async def settle(
        self, status: MessageStatus, error: str = "", pending: PendingRun | None = None
    ) -> Message:
        """Store the reply as ``status`` with what was received, and the
        thread with it (waiting for ``pending``'s tool outputs, if given).

        Raises:
            NotFound: the thread was deleted while the reply ran.
        """
        got = self.received
        stored = await self._writes.finish(
            self.reply.message_id,
            content=got.text,
            status=status,
            usage=got.usage,
            error=error,
            tool_calls=got.calls,
        )
        if stored is None:
            raise NotFound("thread", self.reply.thread_id)
        await self._writes.save([stored.entry()], pending, got.usage)
        return stored
