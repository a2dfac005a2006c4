"""Domain objects: assistants, threads, messages and the events of a reply."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from service.core.generation import GenerationSettings

__all__ = [
    "Assistant",
    "Completed",
    "ContextEntry",
    "ContextStrategy",
    "Delta",
    "MemoryMode",
    "MemoryRecalled",
    "Message",
    "MessageStatus",
    "OnBusy",
    "Page",
    "PendingRun",
    "Recalled",
    "ReplyEvent",
    "Role",
    "Started",
    "Summary",
    "Thread",
    "ThreadOrigin",
    "ToolCall",
    "ToolCallsRequired",
    "ToolSpec",
    "Usage",
]

T = TypeVar("T")


class MemoryMode(enum.StrEnum):
    """What a reply does with the assistant's memory."""

    UNSPECIFIED = "unspecified"
    AUTO = "auto"
    READONLY = "readonly"
    OFF = "off"


class OnBusy(enum.StrEnum):
    """What a message does when another reply holds its thread."""

    REJECT = "reject"  # refused THREAD_BUSY
    ENQUEUE = "enqueue"  # answered after the replies queued before it
    INTERRUPT = "interrupt"  # stops the running reply, then answered next


class Role(enum.StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class MessageStatus(enum.StrEnum):
    """Whether a message is whole."""

    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    FAILED = "failed"
    REQUIRES_ACTION = "requires_action"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True once the message will not change any more."""
        return self is not MessageStatus.IN_PROGRESS


class ContextStrategy(enum.StrEnum):
    """How a long thread is fitted into a context window."""

    SUMMARIZE = "summarize"
    TRUNCATE = "truncate"


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one model call consumed, as the endpoint reported them."""

    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class Assistant:
    """The profile above threads."""

    assistant_id: str
    tenant: str
    name: str = ""
    instructions: str = ""
    model: str = ""
    memory_mode: MemoryMode = MemoryMode.OFF
    metadata: dict[str, str] = field(default_factory=dict)
    create_time: datetime | None = None
    update_time: datetime | None = None
    context_window: int = 0
    context_strategy: ContextStrategy = ContextStrategy.SUMMARIZE
    tools: list[ToolSpec] = field(default_factory=list)
    memory_from_tool_outputs: bool = False
    shared_memory_writes: bool = False  # threads without a user write assistant-wide memory
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for: ``arguments`` is JSON text as written."""

    tool_call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function tool: a name, what it does, and its arguments' JSON Schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PendingRun:
    """A run waiting for tool outputs: which calls it waits for, until when,
    and the settings of the message that started it."""

    run_id: str
    message_id: str
    user_message_id: str
    tool_call_ids: tuple[str, ...]
    round: int
    model: str
    expire_time: datetime
    tools: tuple[ToolSpec, ...] | None = None  # the message's own tool set, if it had one
    tool_choice: str = ""
    request_id: str = ""
    # The run's generation settings, as resolved when it started.
    generation: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """A message as the prompt needs it, cached on the thread so that building
    a prompt reads one document instead of the thread's whole history."""

    sequence: int
    role: Role
    content: str
    status: MessageStatus
    tokens: int = 0  # base tokens of content and tool calls, cached; 0 = not counted yet
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    create_time: datetime | None = None  # None in contexts cached before it was kept


@dataclass(frozen=True, slots=True)
class Summary:
    """A thread's rolling summary: it stands in for the messages up to and
    including ``through_sequence`` in prompts."""

    text: str
    through_sequence: int
    model: str
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ThreadOrigin:
    """Where a forked thread came from: that thread's messages up to and
    including ``through_sequence`` were copied into it."""

    thread_id: str
    through_sequence: int


@dataclass(slots=True)
class Thread:
    """One conversation. ``context`` is the cached tail of its messages (the
    full history stays in the messages collection). ``usage`` totals the
    tokens spent on it; ``open_batch`` is the first sequence of a batch of
    appended messages that is not finished yet (hidden from readers until
    it is, and rolled back if its writer died)."""

    thread_id: str
    tenant: str
    assistant_id: str
    user_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    message_count: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    context: list[ContextEntry] = field(default_factory=list)
    summary: Summary | None = None
    run: PendingRun | None = None
    expire_time: datetime | None = None
    expire_memories: bool = False
    forked_from: ThreadOrigin | None = None
    usage: Usage = Usage()
    open_batch: int | None = None
    fence: int = 0  # epoch of the last lease holder that wrote it (see ports.ThreadClaim)
    replying: bool = False  # a reply was started and its end not yet written


@dataclass(slots=True)
class Message:
    """One turn of a thread."""

    message_id: str
    tenant: str
    thread_id: str
    role: Role
    content: str
    status: MessageStatus
    sequence: int = -1
    model: str = ""
    usage: Usage | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    memory: MemoryMode = MemoryMode.OFF
    create_time: datetime | None = None
    request_id: str = ""
    error: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""
    run_id: str = ""
    schema_error: str = ""  # why the content misses the schema it was asked to match

    def entry(self) -> ContextEntry:
        """This message as a context entry."""
        return ContextEntry(
            self.sequence,
            self.role,
            self.content,
            self.status,
            tool_calls=tuple(self.tool_calls),
            tool_call_id=self.tool_call_id,
            create_time=self.create_time,
        )


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing and the token for the next one ("" at the end)."""

    items: list[T]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Started:
    """First event of a reply: the user message is stored."""

    thread_id: str
    thread_created: bool
    user_message_id: str
    assistant_message_id: str
    model: str
    assistant_id: str


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of reply text."""

    text: str


@dataclass(frozen=True, slots=True)
class Recalled:
    """A memory given to the model for one reply."""

    memory_id: str
    content: str
    score: float


@dataclass(frozen=True, slots=True)
class MemoryRecalled:
    """The memories recalled for a reply, before its first delta; or, with
    ``skipped_reason`` (the ErrorInfo reason of what failed), none because
    recall was skipped."""

    memories: list[Recalled]
    skipped_reason: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallsRequired:
    """Last event of a round in which the model asked for tools."""

    run_id: str
    message_id: str
    tool_calls: list[ToolCall]
    expire_time: datetime


@dataclass(frozen=True, slots=True)
class Completed:
    """Last event of a reply: the stored assistant message, and the memory
    operation it queued (memory AUTO)."""

    message: Message
    memory_operation_id: str = ""


ReplyEvent = Started | MemoryRecalled | Delta | Completed | ToolCallsRequired
