"""Between the client's Python objects and Loom's protobuf messages: requests
built from keyword arguments, responses read into ``loom_client.types``.

Stream events are read by their oneof field names only (never by their
message type names), which the contract keeps stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from google.protobuf import json_format, timestamp_pb2

from loom_client._proto.loom.v1 import (
    assistant_pb2,
    common_pb2,
    generation_pb2,
    memory_pb2,
    thread_pb2,
    tools_pb2,
)
from loom_client.params import AssistantFields, Generation, SendOptions, ToolSpec
from loom_client.tools import function_tool
from loom_client.types import (
    Assistant,
    ContextStrategy,
    Memory,
    MemoryKind,
    MemoryMode,
    MemoryOperation,
    Message,
    MessageStatus,
    OnBusy,
    OperationState,
    RecalledMemory,
    Role,
    ScoredMemory,
    Started,
    Thread,
    ThreadSummary,
    ToolCall,
    Usage,
)

E = TypeVar("E", bound=StrEnum)

# Each client enum beside its protobuf enum and the prefix of its value names.
_ENUMS: dict[type[StrEnum], tuple[Any, str]] = {
    MemoryMode: (common_pb2.MemoryMode, "MEMORY_MODE_"),
    OnBusy: (thread_pb2.OnBusy, "ON_BUSY_"),
    ContextStrategy: (assistant_pb2.ContextStrategy, "CONTEXT_STRATEGY_"),
    Role: (thread_pb2.Role, "ROLE_"),
    MessageStatus: (thread_pb2.MessageStatus, "MESSAGE_STATUS_"),
    MemoryKind: (memory_pb2.MemoryKind, "MEMORY_KIND_"),
    OperationState: (memory_pb2.MemoryOperation.State, "STATE_"),
}


def enum_from_pb(cls: type[E], value: int) -> E:
    """The client enum member for a protobuf enum number (UNSPECIFIED for a
    number this client does not know yet)."""
    wrapper, prefix = _ENUMS[cls]
    try:
        return cls(wrapper.Name(value).removeprefix(prefix).lower())
    except ValueError:
        return cls("unspecified")


def enum_to_pb(cls: type[StrEnum], value: StrEnum | str, argument: str) -> Any:
    """The protobuf number of ``value``, given as a member or its name in any
    case (``"auto"``, ``"AUTO"``, ``"MEMORY_MODE_AUTO"``); typed Any because
    each protobuf enum field wants its own integer type.

    Raises:
        ValueError: ``value`` names no member of ``cls``.
    """
    wrapper, prefix = _ENUMS[cls]
    name = str(value).upper().removeprefix(prefix)
    choices = [m.value for m in cls if m.value != "unspecified"]
    if name.lower() not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(choices)}; got {value!r}")
    number: int = wrapper.Value(prefix + name)
    return number


def timestamp(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(message, name)
    return stamp.ToDatetime(tzinfo=UTC)


def tool_to_pb(spec: ToolSpec) -> tools_pb2.Tool:
    definition = function_tool(spec) if callable(spec) else spec
    return json_format.ParseDict(dict(definition), tools_pb2.Tool())


def tool_from_pb(tool: tools_pb2.Tool) -> dict[str, Any]:
    return json_format.MessageToDict(tool, preserving_proto_field_name=True)


def usage(pb: common_pb2.Usage) -> Usage:
    return Usage(pb.input_tokens, pb.output_tokens)


def tool_calls(calls: Sequence[tools_pb2.ToolCall]) -> list[ToolCall]:
    return [ToolCall(c.tool_call_id, c.name, c.arguments) for c in calls]


def assistant(pb: assistant_pb2.Assistant) -> Assistant:
    return Assistant(
        assistant_id=pb.assistant_id,
        name=pb.name,
        instructions=pb.instructions,
        model=pb.model,
        memory_mode=enum_from_pb(MemoryMode, pb.memory_mode),
        metadata=dict(pb.metadata),
        context_window=pb.context_window,
        context_strategy=enum_from_pb(ContextStrategy, pb.context_strategy),
        tools=[tool_from_pb(t) for t in pb.tools],
        memory_from_tool_outputs=pb.memory_from_tool_outputs,
        create_time=timestamp(pb, "create_time"),
        update_time=timestamp(pb, "update_time"),
        generation=generation_from_pb(pb.generation),
    )


def thread(pb: thread_pb2.Thread) -> Thread:
    summary = None
    if pb.HasField("summary"):
        s = pb.summary
        summary = ThreadSummary(s.text, s.through_sequence, s.model, timestamp(s, "update_time"))
    return Thread(
        thread_id=pb.thread_id,
        assistant_id=pb.assistant_id,
        user_id=pb.user_id,
        metadata=dict(pb.metadata),
        message_count=pb.message_count,
        create_time=timestamp(pb, "create_time"),
        update_time=timestamp(pb, "update_time"),
        summary=summary,
        pending_run_id=pb.pending_run_id,
    )


def message(pb: thread_pb2.Message) -> Message:
    return Message(
        message_id=pb.message_id,
        thread_id=pb.thread_id,
        role=enum_from_pb(Role, pb.role),
        content=pb.content,
        status=enum_from_pb(MessageStatus, pb.status),
        model=pb.model,
        usage=usage(pb.usage),
        sequence=pb.sequence,
        create_time=timestamp(pb, "create_time"),
        metadata=dict(pb.metadata),
        memory=enum_from_pb(MemoryMode, pb.memory),
        tool_calls=tool_calls(pb.tool_calls),
        tool_call_id=pb.tool_call_id,
        run_id=pb.run_id,
        schema_error=pb.schema_error,
    )


def memory(pb: memory_pb2.Memory) -> Memory:
    return Memory(
        memory_id=pb.memory_id,
        assistant_id=pb.assistant_id,
        user_id=pb.user_id,
        content=pb.content,
        kind=enum_from_pb(MemoryKind, pb.kind),
        source_thread_id=pb.source_thread_id,
        source_message_id=pb.source_message_id,
        metadata=dict(pb.metadata),
        create_time=timestamp(pb, "create_time"),
        update_time=timestamp(pb, "update_time"),
    )


def scored_memory(pb: memory_pb2.ScoredMemory) -> ScoredMemory:
    return ScoredMemory(memory(pb.memory), pb.score)


def operation(pb: memory_pb2.MemoryOperation) -> MemoryOperation:
    return MemoryOperation(
        operation_id=pb.operation_id,
        state=enum_from_pb(OperationState, pb.state),
        thread_id=pb.thread_id,
        message_id=pb.message_id,
        attempts=pb.attempts,
        added_memory_ids=list(pb.added_memory_ids),
        updated_memory_ids=list(pb.updated_memory_ids),
        deleted_memory_ids=list(pb.deleted_memory_ids),
        error=pb.error,
        create_time=timestamp(pb, "create_time"),
        update_time=timestamp(pb, "update_time"),
    )


def started(pb: Any) -> Started:
    return Started(
        thread_id=pb.thread_id,
        thread_created=pb.thread_created,
        user_message_id=pb.user_message_id,
        message_id=pb.assistant_message_id,
        model=pb.model,
        assistant_id=pb.assistant_id,
    )


def recalled(pb: Any) -> list[RecalledMemory]:
    return [RecalledMemory(m.memory_id, m.content, m.score) for m in pb.memories]


def send_request(
    content: str, options: SendOptions, request_id: str
) -> thread_pb2.SendMessageRequest:
    """The SendMessageRequest for ``content`` and ``options``."""
    request = thread_pb2.SendMessageRequest(
        content=content,
        thread_id=options.get("thread_id") or "",
        assistant_id=options.get("assistant_id") or "",
        user_id=options.get("user_id") or "",
        model=options.get("model") or "",
        tool_choice=options.get("tool_choice") or "",
        metadata=dict(options.get("metadata") or {}),
        tools=[tool_to_pb(t) for t in options.get("tools") or ()],
        request_id=request_id,
    )
    if "generation" in options:
        request.generation.CopyFrom(generation_pb(options["generation"]))
    mode = options.get("memory")
    if mode:
        request.memory = enum_to_pb(MemoryMode, mode, "memory")
    on_busy = options.get("on_busy")
    if on_busy:
        request.on_busy = enum_to_pb(OnBusy, on_busy, "on_busy")
    return request


def assistant_pb(fields: AssistantFields) -> tuple[assistant_pb2.Assistant, list[str]]:
    """The Assistant message for ``fields`` and the field paths they name
    (the update mask of an update).

    Raises:
        TypeError: a field assistants do not have.
        ValueError: a memory mode or context strategy that does not exist.
    """
    unknown = set(fields) - AssistantFields.__optional_keys__
    if unknown:
        raise TypeError(f"assistants have no field {', '.join(sorted(unknown))}")
    pb = assistant_pb2.Assistant(
        name=fields.get("name", ""),
        instructions=fields.get("instructions", ""),
        model=fields.get("model", ""),
        metadata=dict(fields.get("metadata") or {}),
        context_window=fields.get("context_window", 0),
        tools=[tool_to_pb(t) for t in fields.get("tools") or ()],
        memory_from_tool_outputs=fields.get("memory_from_tool_outputs", False),
    )
    if "generation" in fields:
        pb.generation.CopyFrom(generation_pb(fields["generation"]))
    if "memory_mode" in fields:
        pb.memory_mode = enum_to_pb(MemoryMode, fields["memory_mode"], "memory_mode")
    if "context_strategy" in fields:
        strategy = fields["context_strategy"]
        pb.context_strategy = enum_to_pb(ContextStrategy, strategy, "context_strategy")
    return pb, list(fields)


_EFFORT = "REASONING_EFFORT_"


def generation_pb(settings: Generation) -> generation_pb2.GenerationSettings:
    """GenerationSettings from the keyword form (``reasoning_effort="low"``,
    ``response_format="json_object"``), or the contract's JSON form.

    Raises:
        ValueError: a field the settings do not have, or a value of the wrong kind.
    """
    body: dict[str, Any] = dict(settings)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and not effort.startswith(_EFFORT):
        body["reasoning_effort"] = _EFFORT + effort.upper()
    fmt = body.get("response_format")
    if isinstance(fmt, str):
        body["response_format"] = {fmt: {}}
    try:
        return json_format.ParseDict(body, generation_pb2.GenerationSettings())
    except json_format.ParseError as exc:
        raise ValueError(f"generation: {exc}") from None


def generation_from_pb(pb: generation_pb2.GenerationSettings) -> dict[str, Any]:
    """Settings in the form ``generation=`` takes (only the fields set)."""
    body = json_format.MessageToDict(pb, preserving_proto_field_name=True)
    effort = body.get("reasoning_effort")
    if effort:
        body["reasoning_effort"] = effort.removeprefix(_EFFORT).lower()
    if "seed" in body:  # an int64, which JSON carries as a string
        body["seed"] = int(body["seed"])
    return body
