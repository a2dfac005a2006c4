"""The objects the client returns: plain frozen dataclasses and string enums,
never protobuf messages, so they print, compare and pickle as Python does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "Assistant",
    "ContextStrategy",
    "Event",
    "MemoriesRecalled",
    "Memory",
    "MemoryKind",
    "MemoryMode",
    "MemoryOperation",
    "Message",
    "MessageStatus",
    "OnBusy",
    "OperationState",
    "RecalledMemory",
    "Reply",
    "Role",
    "ScoredMemory",
    "Started",
    "TextDelta",
    "Thread",
    "ThreadSummary",
    "ToolCall",
    "Usage",
]


class MemoryMode(StrEnum):
    """What a message does with the assistant's long-term memory."""

    UNSPECIFIED = "unspecified"
    AUTO = "auto"
    READONLY = "readonly"
    OFF = "off"


class OnBusy(StrEnum):
    """What a message does when another reply is streaming on its thread."""

    UNSPECIFIED = "unspecified"
    REJECT = "reject"
    """Refused at once (``ThreadBusy``); the server's default."""
    ENQUEUE = "enqueue"
    """Wait for the running reply, then be answered with it in history."""
    INTERRUPT = "interrupt"
    """Stop the running reply (stored INCOMPLETE), then be answered next."""


class ContextStrategy(StrEnum):
    """How a thread longer than the context window is fitted into a prompt."""

    UNSPECIFIED = "unspecified"
    SUMMARIZE = "summarize"
    TRUNCATE = "truncate"


class Role(StrEnum):
    """Who wrote a message."""

    UNSPECIFIED = "unspecified"
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class MessageStatus(StrEnum):
    """Whether a message is whole (see the contract's MessageStatus)."""

    UNSPECIFIED = "unspecified"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    REQUIRES_ACTION = "requires_action"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class MemoryKind(StrEnum):
    """Where a memory came from."""

    UNSPECIFIED = "unspecified"
    EPISODIC = "episodic"
    FACT = "fact"
    MANUAL = "manual"


class OperationState(StrEnum):
    """The state of a background memory write."""

    UNSPECIFIED = "unspecified"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one reply cost, as the model endpoint reported them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for; ``arguments`` is the model's JSON text."""

    tool_call_id: str
    name: str
    arguments: str

    def parsed_arguments(self) -> Any:
        """``arguments`` decoded (raises ``ValueError`` if the model wrote bad JSON)."""
        return json.loads(self.arguments or "{}")


@dataclass(frozen=True, slots=True)
class Assistant:
    """The profile above threads: instructions, default model, memory, tools."""

    assistant_id: str
    name: str
    instructions: str
    model: str
    memory_mode: MemoryMode
    metadata: dict[str, str]
    context_window: int
    context_strategy: ContextStrategy
    tools: list[dict[str, Any]]
    memory_from_tool_outputs: bool
    create_time: datetime | None
    update_time: datetime | None
    generation: dict[str, Any] = field(default_factory=dict)
    """Default generation settings, in the shape ``generation=`` takes."""


@dataclass(frozen=True, slots=True)
class ThreadSummary:
    """The rolling summary standing in for a thread's older messages."""

    text: str
    through_sequence: int
    model: str
    update_time: datetime | None


@dataclass(frozen=True, slots=True)
class Thread:
    """One conversation under an assistant."""

    thread_id: str
    assistant_id: str
    user_id: str
    metadata: dict[str, str]
    message_count: int
    create_time: datetime | None
    update_time: datetime | None
    summary: ThreadSummary | None
    pending_run_id: str


@dataclass(frozen=True, slots=True)
class Message:
    """One stored turn of a thread."""

    message_id: str
    thread_id: str
    role: Role
    content: str
    status: MessageStatus
    model: str
    usage: Usage
    sequence: int
    create_time: datetime | None
    metadata: dict[str, str]
    memory: MemoryMode
    tool_calls: list[ToolCall]
    tool_call_id: str
    run_id: str
    schema_error: str = ""
    """Why the content misses the JSON Schema it was asked to match ("": it
    matches, or no schema was asked for)."""


@dataclass(frozen=True, slots=True)
class Memory:
    """One remembered item of an assistant (``user_id`` empty: assistant-wide)."""

    memory_id: str
    assistant_id: str
    user_id: str
    content: str
    kind: MemoryKind
    source_thread_id: str
    source_message_id: str
    metadata: dict[str, str]
    create_time: datetime | None
    update_time: datetime | None


@dataclass(frozen=True, slots=True)
class ScoredMemory:
    """A search result: the memory and its relevance within this search."""

    memory: Memory
    score: float


@dataclass(frozen=True, slots=True)
class MemoryOperation:
    """A background memory write (fact extraction after a reply)."""

    operation_id: str
    state: OperationState
    thread_id: str
    message_id: str
    attempts: int
    added_memory_ids: list[str]
    updated_memory_ids: list[str]
    deleted_memory_ids: list[str]
    error: str
    create_time: datetime | None
    update_time: datetime | None

    @property
    def done(self) -> bool:
        """True once the operation has succeeded or failed for good."""
        return self.state in (OperationState.SUCCEEDED, OperationState.FAILED)


@dataclass(frozen=True, slots=True)
class RecalledMemory:
    """A memory put into the prompt of a reply."""

    memory_id: str
    content: str
    score: float


# ----------------------------------------------------------------- stream events


@dataclass(frozen=True, slots=True)
class Started:
    """First event of a reply: the user message is stored, the reply has an id."""

    thread_id: str
    thread_created: bool
    user_message_id: str
    message_id: str
    model: str
    assistant_id: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the reply's text, in order."""

    text: str


@dataclass(frozen=True, slots=True)
class MemoriesRecalled:
    """The memories given to the model for this reply, most relevant first."""

    memories: list[RecalledMemory]


@dataclass(frozen=True, slots=True)
class Reply:
    """The last event of a reply, and what ``send_message`` returns.

    ``status`` is ``COMPLETE`` for a whole reply, ``REQUIRES_ACTION`` when the
    model asked for tools (``tool_calls``, answered with
    ``submit_tool_outputs(thread_id, run_id, ...)``), or ``INCOMPLETE`` when
    the reply was cut and its retry found what had been stored.
    """

    thread_id: str
    message_id: str
    content: str
    status: MessageStatus
    model: str = ""
    assistant_id: str = ""
    user_message_id: str = ""
    thread_created: bool = False
    usage: Usage = field(default_factory=Usage)
    memories: list[RecalledMemory] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    run_id: str = ""
    memory_operation_id: str = ""
    expire_time: datetime | None = None
    schema_error: str = ""
    """With a ``json_schema`` response format: why the reply does not match
    it ("" when it does)."""

    @property
    def requires_action(self) -> bool:
        """True when the model asked for tools and the run waits for their outputs."""
        return self.status is MessageStatus.REQUIRES_ACTION


Event = Started | TextDelta | MemoriesRecalled | Reply
"""What ``stream_message`` yields; the last event is always the ``Reply``."""
