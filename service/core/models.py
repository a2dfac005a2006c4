"""Domain objects: assistants, threads, messages and the events of a reply."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

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
    "Page",
    "Recalled",
    "ReplyEvent",
    "Role",
    "Started",
    "Summary",
    "Thread",
    "Usage",
]

T = TypeVar("T")


class MemoryMode(enum.StrEnum):
    """What a reply does with the assistant's memory."""

    UNSPECIFIED = "unspecified"
    AUTO = "auto"
    READONLY = "readonly"
    OFF = "off"


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


@dataclass(frozen=True, slots=True)
class ContextEntry:
    """A message as the prompt needs it, cached on the thread so that building
    a prompt reads one document instead of the thread's whole history."""

    sequence: int
    role: Role
    content: str
    status: MessageStatus
    tokens: int = 0  # base tokens of content, cached; 0 = not counted yet


@dataclass(frozen=True, slots=True)
class Summary:
    """A thread's rolling summary: it stands in for the messages up to and
    including ``through_sequence`` in prompts."""

    text: str
    through_sequence: int
    model: str
    update_time: datetime | None = None


@dataclass(slots=True)
class Thread:
    """One conversation. ``context`` is the cached tail of its messages (the
    full history stays in the messages collection)."""

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

    def entry(self) -> ContextEntry:
        """This message as a context entry."""
        return ContextEntry(self.sequence, self.role, self.content, self.status)


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
    """The memories recalled for a reply, before its first delta."""

    memories: list[Recalled]


@dataclass(frozen=True, slots=True)
class Completed:
    """Last event of a reply: the stored assistant message, and the memory
    operation it queued (memory AUTO)."""

    message: Message
    memory_operation_id: str = ""


ReplyEvent = Started | MemoryRecalled | Delta | Completed
