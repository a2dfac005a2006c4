"""The messages a run appends to a thread, the ``Started`` event that
announces a reply, and the holding back of a round's last event, each
built in one place."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

from service.core import ids
from service.core.models import (
    Completed,
    MemoryMode,
    Message,
    MessageStatus,
    ReplyEvent,
    Role,
    Started,
    ToolCallsRequired,
)

__all__ = ["RunMessages", "before_end", "started"]


async def before_end(
    events: AsyncGenerator[ReplyEvent, None], end: list[ReplyEvent]
) -> AsyncGenerator[ReplyEvent, None]:
    """``events`` but the round's last (``Completed`` or
    ``ToolCallsRequired``), which is put in ``end`` instead: its caller
    yields it once the thread's lease is released, so that a client that
    sends its next message as soon as it reads it is never refused
    THREAD_BUSY."""
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, Completed | ToolCallsRequired):
                end.append(event)
                return
            yield event


@dataclass(frozen=True, slots=True)
class RunMessages:
    """New messages of one run on one thread, stamped alike: same tenant,
    thread, run, memory mode and creation time. Each gets a new id; the
    store gives it its sequence number."""

    tenant: str
    thread_id: str
    run_id: str
    memory: MemoryMode
    create_time: datetime

    def user(self, content: str, metadata: dict[str, str], request_id: str) -> Message:
        """The user's message, whole from the start."""
        return self._new(
            Role.USER,
            content,
            MessageStatus.COMPLETE,
            metadata=dict(metadata),
            request_id=request_id,
        )

    def reply(self, model: str, request_id: str = "") -> Message:
        """An empty assistant message for ``model`` to stream into."""
        return self._new(
            Role.ASSISTANT, "", MessageStatus.IN_PROGRESS, model=model, request_id=request_id
        )

    def tool(self, tool_call_id: str, output: str) -> Message:
        """A tool's output, answering the call ``tool_call_id``."""
        return self._new(Role.TOOL, output, MessageStatus.COMPLETE, tool_call_id=tool_call_id)

    def _new(
        self,
        role: Role,
        content: str,
        status: MessageStatus,
        *,
        model: str = "",
        metadata: dict[str, str] | None = None,
        request_id: str = "",
        tool_call_id: str = "",
    ) -> Message:
        return Message(
            message_id=ids.new_id(ids.MESSAGE),
            tenant=self.tenant,
            thread_id=self.thread_id,
            role=role,
            content=content,
            status=status,
            model=model,
            metadata=metadata or {},
            memory=self.memory,
            create_time=self.create_time,
            request_id=request_id,
            tool_call_id=tool_call_id,
            run_id=self.run_id,
        )


def started(
    *,
    thread_id: str,
    thread_created: bool,
    assistant_id: str,
    user_message_id: str,
    reply: Message,
) -> Started:
    """The first event of a reply: where the user's message and the reply
    (streamed by ``reply.model``) are stored."""
    return Started(
        thread_id=thread_id,
        thread_created=thread_created,
        user_message_id=user_message_id,
        assistant_message_id=reply.message_id,
        model=reply.model,
        assistant_id=assistant_id,
    )
