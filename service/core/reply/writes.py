"""Every write made under a thread's lease (``ThreadWrites``), and the writes
of one reply: its progress while it streams and its final state
(``ReplyWriter``).

Nothing else in the reply loop writes a thread's messages or its cached
context, so the fence has one place to go: each write here is checked
against the lease twice, first by the holder (``Lease.check``: a lease it
knows it lost or could not renew stops every write at once), then by the
store, in the write itself (``ThreadClaim``: the lease's epoch against the
document's fence), so a holder that lost its lease without knowing it yet
cannot overwrite its successor. A write the store refuses marks the lease
lost. Driver errors that waiting cures become ``DatabaseUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from service.core.budget import with_tokens
from service.core.clock import now
from service.core.context import merge
from service.core.errors import LeaseLost, LoomError, NotFound
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
from service.core.ports import ChatChunk, MessageStore, ThreadStore, TokenCounter, Translate
from service.core.shield import Shield

__all__ = ["Ending", "Received", "ReplyWriter", "ThreadWrites"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ThreadWrites:
    """The writes to one thread while its lease is held: appending messages,
    a message's progress and final state, and the thread's cached context,
    message count and pending run. ``thread`` is kept as written; ``lease``
    is the lease they are made under. With ``checked`` False the holder's
    own check is skipped (a late write, after ``Leases.reconfirm``); the
    store's fence never is."""

    def __init__(
        self,
        *,
        messages: MessageStore,
        threads: ThreadStore,
        counter: TokenCounter,
        context_chars: int,
        thread: Thread,
        lease: Lease,
        translate: Translate,
    ) -> None:
        self._messages = messages
        self._threads = threads
        self._counter = counter
        self._context_chars = context_chars
        self._translate = translate
        self.thread = thread
        self.lease = lease
        self.checked = True
        self.written = False  # anything but the claim
        self._open: set[str] = set()  # IN_PROGRESS messages of this holder's

    async def _write(self, write: Awaitable[T]) -> T:
        """Await one store write, checked on the lease first."""
        if self.checked:
            self.lease.check()
        try:
            result = await write
        except LoomError:
            raise
        except Exception as exc:
            if (translated := self._translate(exc)) is not None:
                raise translated from exc
            raise
        self.written = True
        return result

    async def _refused(self, message_id: str | None) -> LoomError:
        """Why a fenced write was refused: the thread (or message) is gone,
        or a newer holder wrote it (the lease is then marked lost)."""
        if message_id is not None:
            gone = await self._messages.get(self.thread.tenant, message_id) is None
        else:
            gone = await self._threads.get(self.thread.tenant, self.thread.thread_id) is None
        if gone:
            return NotFound("thread", self.thread.thread_id)
        lost = LeaseLost(self.thread.thread_id)
        self.lease.lose(lost)
        return lost

    async def append(self, messages: list[Message]) -> list[Message]:
        """Store ``messages`` at the thread's next sequence numbers and count
        them on ``thread`` (the count is written with the context)."""
        first = self.thread.message_count
        epoch = self.lease.epoch
        stored = await self._write(self._messages.append_all(messages, first, epoch=epoch))
        self.thread.message_count = stored[-1].sequence + 1
        self._open.update(m.message_id for m in stored if m.status is MessageStatus.IN_PROGRESS)
        return stored

    async def save_progress(self, message_id: str, content: str) -> None:
        """Save what a streaming message holds so far.

        Raises:
            LeaseLost: a newer holder wrote it. NotFound: the thread is gone.
        """
        saved = self._messages.save_progress(
            self.thread.tenant, message_id, content, epoch=self.lease.epoch
        )
        if not await self._write(saved):
            raise await self._refused(message_id)

    async def finish(
        self,
        message_id: str,
        *,
        content: str,
        status: MessageStatus,
        usage: Usage | None = None,
        error: str = "",
        tool_calls: Sequence[ToolCall] = (),
    ) -> Message:
        """Store a message's final state.

        Raises:
            LeaseLost: a newer holder wrote it. NotFound: the thread is gone.
        """
        stored = await self._write(
            self._messages.finish(
                self.thread.tenant,
                message_id,
                content=content,
                status=status,
                usage=usage,
                error=error,
                tool_calls=tool_calls,
                epoch=self.lease.epoch,
            )
        )
        if stored is None:
            raise await self._refused(message_id)
        if status is not MessageStatus.IN_PROGRESS:
            self._open.discard(message_id)
        return stored

    async def restart(self, tenant: str, message_id: str, model: str) -> bool:
        """Put a FAILED, empty message back IN_PROGRESS for a retry."""
        epoch = self.lease.epoch
        restarted = await self._write(
            self._messages.restart(tenant, message_id, model, epoch=epoch)
        )
        if restarted:
            self._open.add(message_id)
        return restarted

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
        closing an open batch and adding ``usage`` to the thread's totals.

        Raises:
            LeaseLost: a newer holder wrote the thread. NotFound: it is gone.
        """
        await self.cache(entries)
        self.thread.run = run
        self.thread.open_batch = None
        t = self.thread
        t.update_time = now()
        saved = self._threads.save_context(
            t.tenant,
            t.thread_id,
            t.context,
            t.message_count,
            t.update_time,
            t.run,
            usage,
            epoch=self.lease.epoch,
            replying=bool(self._open),
        )
        if not await self._write(saved):
            raise await self._refused(None)
        t.replying = bool(self._open)

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

    async def end_claim(self) -> None:
        """After a hold that wrote nothing: the claim marked a reply started,
        so unmark it (unless an earlier holder's reply is unfinished)."""
        if self.written or self.thread.replying or self.lease.lost.is_set():
            return
        try:
            await self._threads.end_claim(
                self.thread.tenant, self.thread.thread_id, epoch=self.lease.epoch
            )
        except Exception:
            log.warning("could not end the claim on %s", self.thread.thread_id, exc_info=True)


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


@dataclass(frozen=True, slots=True)
class Ending:
    """How a reply ends: its status, error and the run it leaves waiting."""

    status: MessageStatus
    error: str = ""
    pending: PendingRun | None = None


class ReplyWriter:
    """One reply's writes: what the model sent, saved every
    ``flush_interval`` seconds while it streams (in the background, so a
    slow database never holds the stream back), and the reply's final state
    with the run it leaves waiting on the thread, if any."""

    def __init__(
        self, writes: ThreadWrites, reply: Message, flush_interval: float, shield: Shield
    ) -> None:
        self._writes = writes
        self._flush_interval = flush_interval
        self._shield = shield
        self._last_save = time.monotonic()
        self._saving: asyncio.Task[None] | None = None
        self.reply = reply
        self.received = Received()

    @property
    def thread(self) -> Thread:
        """The reply's thread, as written."""
        return self._writes.thread

    @property
    def writes(self) -> ThreadWrites:
        return self._writes

    def checkpoint(self) -> None:
        """Start saving the text received so far, if ``flush_interval`` has
        passed since the last save and none is under way. A save the store
        refuses interrupts the reply (``Lease.lose``); one the database
        could not take is left to the next."""
        if self._saving is not None or time.monotonic() - self._last_save < self._flush_interval:
            return
        self._last_save = time.monotonic()
        self._saving = self._shield.spawn(self._save(self.received.text))

    async def _save(self, text: str) -> None:
        try:
            await self._writes.save_progress(self.reply.message_id, text)
        except NotFound as exc:
            self._writes.lease.interrupt(exc)
        except LoomError as exc:  # LeaseLost has already stopped the reply
            log.debug("progress of %s not saved: %s", self.reply.message_id, exc.message)
        finally:
            self._saving = None

    async def _saved(self) -> None:
        """Wait for the save under way, so the final state lands after it."""
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._saving)

    async def keep_received(self) -> None:
        """After the lease was lost: store the text the caller received as
        the reply's progress, fenced by the store alone (refused once the
        holder that took the thread over wrote the reply), so that what is
        stored is what the caller saw. The reply stays IN_PROGRESS for that
        holder to settle; this is the lost holder's last write."""
        await self._saved()
        self._writes.checked = False
        try:
            await self._writes.save_progress(self.reply.message_id, self.received.text)
        except Exception as exc:  # noqa: BLE001 - refused or unreachable: the successor's text stands
            log.debug("reply %s: received text not kept: %s", self.reply.message_id, exc)

    async def settle(self, ending: Ending) -> Message:
        """Store the reply as ``ending`` says with what was received, and the
        thread with it (waiting for ``ending.pending``'s tool outputs, if
        given).

        Raises:
            NotFound: the thread was deleted while the reply ran.
            LeaseLost: a newer holder has the thread.
            DatabaseUnavailable: the database did not take the writes.
        """
        self._writes.lease.ending = True  # a new reply on the thread waits for the release
        await self._saved()
        got = self.received
        stored = await self._writes.finish(
            self.reply.message_id,
            content=got.text,
            status=ending.status,
            usage=got.usage,
            error=ending.error,
            tool_calls=got.calls,
        )
        await self._writes.save([stored.entry()], ending.pending, got.usage)
        return stored
