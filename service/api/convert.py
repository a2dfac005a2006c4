"""Domain objects to protobuf messages and back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, assert_never

from google.protobuf import duration_pb2, field_mask_pb2, json_format, message, struct_pb2
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.timestamp_pb2 import Timestamp

from generated.loom.v1 import assistant_pb2, common_pb2, thread_pb2, tools_pb2
from service.api.generation import generation_to_pb
from service.core import models
from service.core.batches import NewMessage
from service.core.errors import InvalidArgument
from service.core.threads import Expiration, ThreadDraft

__all__ = [
    "assistant_to_pb",
    "event_to_pb",
    "expiration_from_pb",
    "memory_from_pb",
    "message_to_pb",
    "new_message_from_pb",
    "strategy_from_pb",
    "thread_draft_from_pb",
    "thread_to_pb",
    "timestamp",
    "tools_from_pb",
    "update_paths",
]

# The two reply streams: one conversion serves both.
_Response = TypeVar(
    "_Response", thread_pb2.SendMessageResponse, thread_pb2.SubmitToolOutputsResponse
)
_Value = TypeVar("_Value")

_MEMORY_TO_PB = {
    models.MemoryMode.UNSPECIFIED: common_pb2.MEMORY_MODE_UNSPECIFIED,
    models.MemoryMode.AUTO: common_pb2.MEMORY_MODE_AUTO,
    models.MemoryMode.READONLY: common_pb2.MEMORY_MODE_READONLY,
    models.MemoryMode.OFF: common_pb2.MEMORY_MODE_OFF,
}
_MEMORY_FROM_PB: dict[int, models.MemoryMode] = {v: k for k, v in _MEMORY_TO_PB.items()}
_ON_BUSY_FROM_PB: dict[int, models.OnBusy] = {
    thread_pb2.ON_BUSY_UNSPECIFIED: models.OnBusy.REJECT,
    thread_pb2.ON_BUSY_REJECT: models.OnBusy.REJECT,
    thread_pb2.ON_BUSY_ENQUEUE: models.OnBusy.ENQUEUE,
    thread_pb2.ON_BUSY_INTERRUPT: models.OnBusy.INTERRUPT,
}
_STRATEGY_TO_PB = {
    models.ContextStrategy.SUMMARIZE: assistant_pb2.CONTEXT_STRATEGY_SUMMARIZE,
    models.ContextStrategy.TRUNCATE: assistant_pb2.CONTEXT_STRATEGY_TRUNCATE,
}
_STRATEGY_FROM_PB: dict[int, models.ContextStrategy | None] = {
    assistant_pb2.CONTEXT_STRATEGY_UNSPECIFIED: None,
    **{v: k for k, v in _STRATEGY_TO_PB.items()},
}
_ROLE_TO_PB = {
    models.Role.USER: thread_pb2.ROLE_USER,
    models.Role.ASSISTANT: thread_pb2.ROLE_ASSISTANT,
    models.Role.SYSTEM: thread_pb2.ROLE_SYSTEM,
    models.Role.TOOL: thread_pb2.ROLE_TOOL,
}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_STATUS_TO_PB = {
    models.MessageStatus.IN_PROGRESS: thread_pb2.MESSAGE_STATUS_IN_PROGRESS,
    models.MessageStatus.COMPLETE: thread_pb2.MESSAGE_STATUS_COMPLETE,
    models.MessageStatus.INCOMPLETE: thread_pb2.MESSAGE_STATUS_INCOMPLETE,
    models.MessageStatus.FAILED: thread_pb2.MESSAGE_STATUS_FAILED,
    models.MessageStatus.REQUIRES_ACTION: thread_pb2.MESSAGE_STATUS_REQUIRES_ACTION,
    models.MessageStatus.EXPIRED: thread_pb2.MESSAGE_STATUS_EXPIRED,
    models.MessageStatus.CANCELLED: thread_pb2.MESSAGE_STATUS_CANCELLED,
}


def tools_from_pb(tools: Iterable[tools_pb2.Tool], field: str) -> list[models.ToolSpec]:
    """Function tools from the API's OpenAI-shaped definitions.

    Raises:
        InvalidArgument: a tool whose type is not "function", or whose
            parameters hold a number JSON cannot write (NaN, infinity).
    """
    specs = []
    for i, tool in enumerate(tools):
        if tool.type not in ("", "function"):
            raise InvalidArgument(
                f'{field}[{i}].type {tool.type[:40]!r} is not supported; use "function"',
                field=f"{field}[{i}].type",
            )
        specs.append(
            models.ToolSpec(
                name=tool.function.name,
                description=tool.function.description,
                parameters=_parameters(
                    tool.function.parameters, f"{field}[{i}].function.parameters"
                ),
            )
        )
    return specs


def _parameters(parameters: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A tool's JSON schema as a dict.

    Raises:
        InvalidArgument: it holds NaN or an infinity, which JSON (and so the
            model endpoint) cannot carry.
    """
    try:
        return json_format.MessageToDict(parameters)
    except ValueError:
        raise InvalidArgument(
            f"{field} holds a number JSON cannot write (NaN or infinity); use finite numbers",
            field=field,
        ) from None


def _tool_to_pb(spec: models.ToolSpec) -> tools_pb2.Tool:
    parameters = struct_pb2.Struct()
    parameters.update(spec.parameters)
    return tools_pb2.Tool(
        type="function",
        function=tools_pb2.FunctionDefinition(
            name=spec.name, description=spec.description, parameters=parameters
        ),
    )


def _calls_to_pb(calls: Iterable[models.ToolCall]) -> list[tools_pb2.ToolCall]:
    return [
        tools_pb2.ToolCall(tool_call_id=c.tool_call_id, name=c.name, arguments=c.arguments)
        for c in calls
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def timestamp(value: datetime | None) -> Timestamp | None:
    """A datetime as a protobuf Timestamp (None stays unset; a naive one is UTC)."""
    if value is None:
        return None
    # As Timestamp.FromDatetime, in a third of its time: a response of
    # 1,000 memories holds 2,000 of them.
    micros = (value if value.tzinfo else value.replace(tzinfo=UTC)) - _EPOCH
    seconds, rest = divmod(micros // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=rest * 1000)


def update_paths(
    mask: field_mask_pb2.FieldMask, resource: message.Message, updatable: Sequence[str]
) -> list[str]:
    """The paths of an update (AIP-134): the mask's, or without one every
    updatable field the caller set on ``resource``."""
    return list(mask.paths) or [f.name for f, _ in resource.ListFields() if f.name in updatable]


def _time_from_pb(value: Timestamp, field: str) -> datetime:
    """Raises InvalidArgument: a Timestamp out of its range (fuzzed: was INTERNAL)."""
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(
            f"{field} is not a valid time: seconds from 0001-01-01 to 9999-12-31, and nanos "
            "from 0 to 999,999,999",
            field=field,
        ) from None


def _duration_from_pb(value: duration_pb2.Duration, field: str) -> timedelta:
    """Raises InvalidArgument: a Duration out of its range."""
    try:
        return value.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{field} is not a valid duration", field=field) from None


def expiration_from_pb(t: thread_pb2.Thread) -> Expiration:
    """A thread's expiration as the caller gave it (``expire_time`` or ``ttl``)."""
    which = t.WhichOneof("expiration")
    return Expiration(
        expire_time=_time_from_pb(t.expire_time, "thread.expire_time")
        if which == "expire_time"
        else None,
        ttl=_duration_from_pb(t.ttl, "thread.ttl") if which == "ttl" else None,
        expire_memories=t.expire_memories,
    )


def thread_draft_from_pb(t: thread_pb2.Thread) -> ThreadDraft:
    """The updatable fields of a thread as the caller gave them."""
    return ThreadDraft(
        assistant_id=t.assistant_id, metadata=dict(t.metadata), expiration=expiration_from_pb(t)
    )


def new_message_from_pb(m: thread_pb2.Message) -> NewMessage:
    """A message given to AddMessages (a role Loom does not know reads as
    none, for the domain to refuse)."""
    return NewMessage(
        role=_ROLE_FROM_PB.get(m.role),
        content=m.content,
        create_time=_time_from_pb(m.create_time, "messages.create_time")
        if m.HasField("create_time")
        else None,
        metadata=dict(m.metadata),
        model=m.model,
        tool_calls=[models.ToolCall(c.tool_call_id, c.name, c.arguments) for c in m.tool_calls],
        tool_call_id=m.tool_call_id,
    )


def _enum_from_pb(
    value: int, table: Mapping[int, _Value], descriptor: EnumDescriptor, field: str
) -> _Value:
    """``table[value]``; a number the contract does not define is refused
    rather than read as a default (proto3 enums carry any number).

    Raises:
        InvalidArgument: naming the field and every value it accepts.
    """
    if value in table:
        return table[value]
    accepted = ", ".join(f"{v.name} ({v.number})" for v in descriptor.values)
    raise InvalidArgument(
        f"{field} {value} is not a {descriptor.name} value; use one of {accepted}", field=field
    )


def memory_from_pb(value: int, field: str) -> models.MemoryMode:
    """A MemoryMode from the API (UNSPECIFIED included).

    Raises:
        InvalidArgument: a number the contract does not define.
    """
    return _enum_from_pb(value, _MEMORY_FROM_PB, common_pb2.MemoryMode.DESCRIPTOR, field)


def on_busy_from_pb(value: int, field: str) -> models.OnBusy:
    """An OnBusy from the API (UNSPECIFIED is REJECT).

    Raises:
        InvalidArgument: a number the contract does not define.
    """
    return _enum_from_pb(value, _ON_BUSY_FROM_PB, thread_pb2.OnBusy.DESCRIPTOR, field)


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
        tools=[_tool_to_pb(t) for t in a.tools],
        memory_from_tool_outputs=a.memory_from_tool_outputs,
        shared_memory_writes=a.shared_memory_writes,
        generation=generation_to_pb(a.generation),
    )


def strategy_from_pb(value: int, field: str) -> models.ContextStrategy | None:
    """A ContextStrategy from the API; None for UNSPECIFIED.

    Raises:
        InvalidArgument: a number the contract does not define.
    """
    return _enum_from_pb(value, _STRATEGY_FROM_PB, assistant_pb2.ContextStrategy.DESCRIPTOR, field)


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
        pending_run_id=t.run.run_id if t.run else "",
        expire_time=timestamp(t.expire_time),
        expire_memories=t.expire_memories,
        forked_from=thread_pb2.ThreadOrigin(
            thread_id=t.forked_from.thread_id, through_sequence=t.forked_from.through_sequence
        )
        if t.forked_from
        else None,
        usage=common_pb2.Usage(
            input_tokens=t.usage.input_tokens, output_tokens=t.usage.output_tokens
        ),
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
        tool_calls=_calls_to_pb(m.tool_calls),
        tool_call_id=m.tool_call_id,
        run_id=m.run_id,
        schema_error=m.schema_error,
    )


def event_to_pb(event: models.ReplyEvent, response: type[_Response]) -> _Response:
    """One reply event as a message of either reply stream (SendMessage or
    SubmitToolOutputs: their events share types, field names and numbers)."""
    match event:
        case models.Started():
            return response(
                started=thread_pb2.ReplyStarted(
                    thread_id=event.thread_id,
                    thread_created=event.thread_created,
                    user_message_id=event.user_message_id,
                    assistant_message_id=event.assistant_message_id,
                    model=event.model,
                    assistant_id=event.assistant_id,
                )
            )
        case models.MemoryRecalled():
            return response(
                memory=thread_pb2.MemoryRecalled(
                    memories=[
                        thread_pb2.RecalledMemory(
                            memory_id=m.memory_id, content=m.content, score=m.score
                        )
                        for m in event.memories
                    ],
                    skipped_reason=event.skipped_reason,
                )
            )
        case models.Delta():
            return response(delta=thread_pb2.ReplyDelta(text=event.text))
        case models.Completed():
            return response(
                completed=thread_pb2.ReplyCompleted(
                    message=message_to_pb(event.message),
                    memory_operation_id=event.memory_operation_id,
                )
            )
        case models.ToolCallsRequired():
            return response(
                tool_calls_required=thread_pb2.ToolCallsRequired(
                    run_id=event.run_id,
                    message_id=event.message_id,
                    tool_calls=_calls_to_pb(event.tool_calls),
                    expire_time=timestamp(event.expire_time),
                )
            )
        case _:
            assert_never(event)
