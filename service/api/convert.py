"""Domain objects to protobuf messages and back."""

from __future__ import annotations

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from generated.loom.v1 import assistant_pb2, common_pb2, thread_pb2
from service.core import models

__all__ = [
    "assistant_to_pb",
    "event_to_pb",
    "memory_from_pb",
    "message_to_pb",
    "strategy_from_pb",
    "thread_to_pb",
    "timestamp",
]

_MEMORY_TO_PB = {
    models.MemoryMode.UNSPECIFIED: common_pb2.MEMORY_MODE_UNSPECIFIED,
    models.MemoryMode.AUTO: common_pb2.MEMORY_MODE_AUTO,
    models.MemoryMode.READONLY: common_pb2.MEMORY_MODE_READONLY,
    models.MemoryMode.OFF: common_pb2.MEMORY_MODE_OFF,
}
_MEMORY_FROM_PB = {v: k for k, v in _MEMORY_TO_PB.items()}
_STRATEGY_TO_PB = {
    models.ContextStrategy.SUMMARIZE: assistant_pb2.CONTEXT_STRATEGY_SUMMARIZE,
    models.ContextStrategy.TRUNCATE: assistant_pb2.CONTEXT_STRATEGY_TRUNCATE,
}
_STRATEGY_FROM_PB = {v: k for k, v in _STRATEGY_TO_PB.items()}
_ROLE_TO_PB = {
    models.Role.USER: thread_pb2.ROLE_USER,
    models.Role.ASSISTANT: thread_pb2.ROLE_ASSISTANT,
    models.Role.SYSTEM: thread_pb2.ROLE_SYSTEM,
    models.Role.TOOL: thread_pb2.ROLE_TOOL,
}
_STATUS_TO_PB = {
    models.MessageStatus.IN_PROGRESS: thread_pb2.MESSAGE_STATUS_IN_PROGRESS,
    models.MessageStatus.COMPLETE: thread_pb2.MESSAGE_STATUS_COMPLETE,
    models.MessageStatus.INCOMPLETE: thread_pb2.MESSAGE_STATUS_INCOMPLETE,
    models.MessageStatus.FAILED: thread_pb2.MESSAGE_STATUS_FAILED,
}


def timestamp(value: datetime | None) -> Timestamp | None:
    """A datetime as a protobuf Timestamp (None stays unset)."""
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def memory_from_pb(value: int) -> models.MemoryMode:
    """Unknown enum numbers (from newer clients) read as UNSPECIFIED."""
    return _MEMORY_FROM_PB.get(value, models.MemoryMode.UNSPECIFIED)  # type: ignore[call-overload,no-any-return]


def assistant_to_pb(a: models.Assistant) -> assistant_pb2.Assistant:
    """An assistant as the API shows it."""
    return assistant_pb2.Assistant(
        assistant_id=a.assistant_id,
        name=a.name,
        instructions=a.instructions,
        model=a.model,
        memory_mode=_MEMORY_TO_PB[a.memory_mode],
        metadata=a.metadata,
        create_time=timestamp(a.create_time),
        update_time=timestamp(a.update_time),
        context_window=a.context_window,
        context_strategy=_STRATEGY_TO_PB[a.context_strategy],
    )


def strategy_from_pb(value: int) -> models.ContextStrategy | None:
    """None for UNSPECIFIED (and for numbers from newer clients)."""
    return _STRATEGY_FROM_PB.get(value)  # type: ignore[call-overload,no-any-return]


def thread_to_pb(t: models.Thread) -> thread_pb2.Thread:
    """A thread as the API shows it."""
    return thread_pb2.Thread(
        thread_id=t.thread_id,
        assistant_id=t.assistant_id,
        user_id=t.user_id,
        metadata=t.metadata,
        message_count=t.message_count,
        create_time=timestamp(t.create_time),
        update_time=timestamp(t.update_time),
        summary=thread_pb2.ThreadSummary(
            text=t.summary.text,
            through_sequence=t.summary.through_sequence,
            model=t.summary.model,
            update_time=timestamp(t.summary.update_time),
        )
        if t.summary
        else None,
    )


def message_to_pb(m: models.Message) -> thread_pb2.Message:
    """A message as the API shows it."""
    return thread_pb2.Message(
        message_id=m.message_id,
        thread_id=m.thread_id,
        role=_ROLE_TO_PB[m.role],
        content=m.content,
        status=_STATUS_TO_PB[m.status],
        model=m.model,
        usage=common_pb2.Usage(
            input_tokens=m.usage.input_tokens, output_tokens=m.usage.output_tokens
        )
        if m.usage
        else None,
        sequence=m.sequence,
        create_time=timestamp(m.create_time),
        metadata=m.metadata,
        memory=_MEMORY_TO_PB[m.memory],
    )


def event_to_pb(event: models.ReplyEvent) -> thread_pb2.SendMessageResponse:
    """One reply event as a stream message."""
    if isinstance(event, models.Delta):
        return thread_pb2.SendMessageResponse(
            delta=thread_pb2.SendMessageResponse.Delta(text=event.text)
        )
    if isinstance(event, models.MemoryRecalled):
        return thread_pb2.SendMessageResponse(
            memory=thread_pb2.SendMessageResponse.MemoryRecalled(
                memories=[
                    thread_pb2.SendMessageResponse.RecalledMemory(
                        memory_id=m.memory_id, content=m.content, score=m.score
                    )
                    for m in event.memories
                ]
            )
        )
    if isinstance(event, models.Started):
        return thread_pb2.SendMessageResponse(
            started=thread_pb2.SendMessageResponse.Started(
                thread_id=event.thread_id,
                thread_created=event.thread_created,
                user_message_id=event.user_message_id,
                assistant_message_id=event.assistant_message_id,
                model=event.model,
                assistant_id=event.assistant_id,
            )
        )
    return thread_pb2.SendMessageResponse(
        completed=thread_pb2.SendMessageResponse.Completed(
            message=message_to_pb(event.message),
            memory_operation_id=event.memory_operation_id,
        )
    )
