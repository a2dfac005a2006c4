"""What a reply does around the model call with the assistant's memory and
the thread's summary: recall and an episodic write before it, a summary fold
and a fact-extraction job after it. None of them ever fails a reply.

Who may write memory: with memory AUTO, a thread with a user writes that
user's memories; a thread without one would write assistant-wide memories,
recalled into every user's prompt, so it writes none unless its assistant
opts in (``shared_memory_writes``).
"""

from __future__ import annotations

import asyncio
import logging

from service.core.errors import LoomError
from service.core.models import (
    Assistant,
    ContextStrategy,
    MemoryMode,
    MemoryRecalled,
    Message,
    Role,
    Thread,
)
from service.core.ports import MemoryPort
from service.core.shield import Shield
from service.core.summaries import Summarizer
from service.telemetry import annotate

__all__ = ["Remembering", "ReplyHooks"]

log = logging.getLogger(__name__)


class Remembering:
    """The episodic write of a user's message, started before the model is
    called. Every path of a reply waits for it (under the shield, so a
    caller who goes away cannot leave it unobserved), and a failure is
    logged, not raised."""

    def __init__(self, write: asyncio.Future[None] | None, message_id: str) -> None:
        self._write = write
        self._message_id = message_id

    async def wait(self) -> None:
        """Wait for the write the first time; later calls return at once."""
        write, self._write = self._write, None
        if write is None:
            return
        try:
            await write
        except Exception:
            log.warning(
                "episodic memory write failed for %s; the extraction job retries it",
                self._message_id,
                exc_info=True,
            )


class ReplyHooks:
    """Memory and summary work of a reply; each is a no-op when the thread's
    assistant or the message does not ask for it."""

    def __init__(
        self, memory: MemoryPort | None, summarizer: Summarizer | None, shield: Shield
    ) -> None:
        self._memory = memory
        self._summarizer = summarizer
        self._shield = shield

    def _writes(self, assistant: Assistant, thread: Thread, user: Message) -> MemoryPort | None:
        """The memory to write to for this message, if it may write at all
        (see the module docstring)."""
        if self._memory is None or user.memory is not MemoryMode.AUTO:
            return None
        if not thread.user_id and not assistant.shared_memory_writes:
            return None
        return self._memory

    def remember(
        self, tenant: str, assistant: Assistant, thread: Thread, user: Message
    ) -> Remembering:
        """Start indexing the user's message (memory AUTO), so that the next
        request can recall it; the reply waits for it before it ends."""
        memory = self._writes(assistant, thread, user)
        if memory is None:
            return Remembering(None, user.message_id)
        write = memory.remember(tenant, thread.assistant_id, thread.user_id, thread.thread_id, user)
        return Remembering(asyncio.ensure_future(self._shield.run(write)), user.message_id)

    async def recall(self, tenant: str, thread: Thread, user: Message) -> MemoryRecalled | None:
        """The memories for the reply's prompt (memory AUTO or READONLY), as
        the event that announces them; None when there is nothing to say.
        A recall that fails never fails the reply: it goes on without
        memories, and the event and the call's span say recall was skipped
        and why."""
        if self._memory is None or user.memory not in (MemoryMode.AUTO, MemoryMode.READONLY):
            return None
        try:
            recalled = await self._memory.recall(
                tenant, thread.assistant_id, thread.user_id, thread.thread_id, user.content
            )
        except Exception as exc:  # a reply without memories beats no reply
            reason = exc.reason if isinstance(exc, LoomError) else "INTERNAL"
            log.warning(
                "memory recall failed for %s (%s); replying without it",
                user.message_id,
                reason,
                exc_info=True,
            )
            annotate({"loom.memory.recall_skipped": reason})
            return MemoryRecalled([], skipped_reason=reason)
        return MemoryRecalled(recalled) if recalled else None

    async def fold(
        self, tenant: str, assistant: Assistant, thread: Thread, model: str, limit: int
    ) -> None:
        """Queue a summary of the thread's older messages if it needs one
        (assistants that summarise only)."""
        if (
            self._summarizer is None
            or assistant.context_strategy is not ContextStrategy.SUMMARIZE
            or not self._summarizer.needs_fold(thread, limit)
        ):
            return
        try:
            await self._summarizer.schedule(tenant, thread, model, limit)
        except Exception:  # the next reply schedules it again
            log.warning("could not queue a summary of %s", thread.thread_id, exc_info=True)

    async def schedule_extraction(
        self, tenant: str, assistant: Assistant, thread: Thread, user: Message, reply: Message
    ) -> str:
        """Queue the job that learns facts from the exchange (memory AUTO);
        return its id, or "" if none was queued."""
        memory = self._writes(assistant, thread, user)
        if memory is None:
            return ""
        tool_outputs = (
            [
                e.content
                for e in thread.context
                if e.role is Role.TOOL and user.sequence < e.sequence < reply.sequence
            ]
            if assistant.memory_from_tool_outputs
            else []
        )
        try:
            return await memory.schedule_extraction(
                tenant,
                thread.assistant_id,
                thread.user_id,
                thread.thread_id,
                user.message_id,
                reply.message_id,
                reply.model,
                tool_outputs,
            )
        except Exception:
            log.warning("could not queue memory extraction for %s", reply.message_id, exc_info=True)
            return ""
