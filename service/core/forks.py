"""ForkThread: a new thread holding a copy of another's messages up to one
sequence, so a client can edit a message (fork before it, send the new
text) or regenerate a reply (fork before it, send empty content).

The fork's messages are written first and its thread document last, so the
fork appears whole or not at all. A durable check is queued before the
copy starts: if the thread document never appears (the copying replica
died), the check deletes the copied messages.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from service.core import ids
from service.core.clock import now
from service.core.context import merge
from service.core.errors import InvalidArgument, ThreadBusy
from service.core.models import ContextEntry, Message, MessageStatus, Thread, ThreadOrigin
from service.core.ports import MessageStore
from service.core.threads import Threads

__all__ = ["FORK_GRACE", "Forks"]

COPY_PAGE = 1000
# How long a copy may take before its messages count as left behind.
FORK_GRACE = timedelta(hours=1)


class Forks:
    """Forks threads; ``context_chars`` bounds the context cached on a fork
    as on any thread."""

    def __init__(self, threads: Threads, messages: MessageStore, *, context_chars: int) -> None:
        self._threads = threads
        self._messages = messages
        self._context_chars = context_chars

    async def fork(self, tenant: str, thread_id: str, through_sequence: int) -> Thread:
        """A new thread under the same assistant and user, with the same
        metadata and expiration, holding copies (new ids, same sequences) of
        the messages up to and including ``through_sequence`` (-1: none).
        The original's summary comes along if it covers nothing past that
        sequence; otherwise the fork is summarised afresh when it needs to
        be. A message waiting for tool outputs is copied CANCELLED.

        Raises:
            InvalidArgument: malformed id, or no such sequence in the thread.
            NotFound: no such thread (or its assistant is being deleted).
            ThreadBusy: a message up to that sequence is still streaming.
        """
        original = await self._threads.get(tenant, thread_id)
        visible = original.open_batch if original.open_batch is not None else 2**62
        if through_sequence < -1 or through_sequence >= visible:
            raise InvalidArgument(
                f"through_sequence {through_sequence} is not a message of thread {thread_id!r}; "
                "use a message's sequence, or -1 for a fork with no messages",
                field="through_sequence",
            )
        fork_id = ids.new_id(ids.THREAD)
        t = now()
        await self._threads.schedule_purge(tenant, fork_id, t + FORK_GRACE)
        copied, context = await self._copy(tenant, original, fork_id, through_sequence)
        summary = original.summary
        fork = Thread(
            thread_id=fork_id,
            tenant=tenant,
            assistant_id=original.assistant_id,
            user_id=original.user_id,
            metadata=dict(original.metadata),
            message_count=copied,
            create_time=t,
            update_time=t,
            context=context,
            summary=summary if summary and summary.through_sequence <= through_sequence else None,
            expire_time=original.expire_time,
            expire_memories=original.expire_memories,
            forked_from=ThreadOrigin(thread_id, through_sequence),
        )
        await self._threads.insert(fork)
        return fork

    async def _copy(
        self, tenant: str, original: Thread, fork_id: str, through: int
    ) -> tuple[int, list[ContextEntry]]:
        """Copy the messages up to ``through`` into ``fork_id``; return how
        many, and the fork's cached context (its newest messages, with the
        token counts the original had cached). They are read in one query
        (on FerretDB over SQLite every query but one by ``_id`` reads the
        whole collection, so one read beats a page at a time) and written
        ``COPY_PAGE`` at a time. Nothing is written if one is streaming.

        Raises:
            InvalidArgument: the thread has no message ``through``.
            ThreadBusy: a message to copy is IN_PROGRESS.
        """
        messages = await self._messages.find_page(
            tenant, original.thread_id, through + 1, None, False, before=through + 1
        )
        if len(messages) != through + 1:
            raise InvalidArgument(
                f"through_sequence {through} is not a message of thread {original.thread_id!r} "
                f"(it has {len(messages)} messages up to there)",
                field="through_sequence",
            )
        if any(m.status is MessageStatus.IN_PROGRESS for m in messages):
            raise ThreadBusy(
                original.thread_id,
                waiting="a reply up to that sequence is still streaming; fork before it, or "
                "once it has completed",
            )
        counted = {e.sequence: e.tokens for e in original.context}
        context: list[ContextEntry] = []
        try:
            for i in range(0, len(messages), COPY_PAGE):
                copies = [_copy(m, fork_id) for m in messages[i : i + COPY_PAGE]]
                await self._messages.append_all(copies, copies[0].sequence)
                entries = [replace(m.entry(), tokens=counted.get(m.sequence, 0)) for m in copies]
                context = merge(context, entries, self._context_chars)
        except BaseException:
            await self._messages.delete_thread(tenant, fork_id)
            raise
        return len(messages), context


def _copy(message: Message, fork_id: str) -> Message:
    """``message`` as the fork holds it: a new id, no request id, and no run
    left waiting for tool outputs."""
    waiting = message.status is MessageStatus.REQUIRES_ACTION
    return replace(
        message,
        message_id=ids.new_id(ids.MESSAGE),
        thread_id=fork_id,
        request_id="",
        status=MessageStatus.CANCELLED if waiting else message.status,
        error="cancelled by the fork" if waiting else message.error,
        tool_calls=list(message.tool_calls),
        metadata=dict(message.metadata),
    )
