"""What a reply is built with: the stores it reads and writes, the services
it calls, and the policies (limits and timings) it follows."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.core.assistants import Assistants
from service.core.leases import Leases
from service.core.ports import (
    ChatModel,
    MemoryPort,
    MessageStore,
    RequestStore,
    ThreadStore,
    TokenCounter,
    Translate,
)
from service.core.shield import Shield
from service.core.summaries import Summarizer
from service.core.threads import Threads

__all__ = ["ReplyPolicy", "ReplyServices", "ReplyStores"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyStores:
    """Where a reply reads and writes: the assistant and thread use cases,
    the stores beneath them, the thread leases, the shield that lets a
    reply's final writes outlive a caller who went away, and the store's
    translation of its driver errors (``DatabaseUnavailable`` for what
    waiting cures)."""

    assistants: Assistants
    threads: Threads
    thread_store: ThreadStore
    messages: MessageStore
    requests: RequestStore
    leases: Leases
    shield: Shield
    translate: Translate = field(default=lambda _: None)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyServices:
    """What a reply calls besides its stores: the model, the token counter,
    and (when set up) the assistant's memory and the thread summarizer."""

    llm: ChatModel
    counter: TokenCounter
    memory: MemoryPort | None = None
    summarizer: Summarizer | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplyPolicy:
    """The limits and timings a reply follows, from the settings."""

    default_model: str  # when neither the request nor the assistant names one
    max_content: int  # characters of a user message
    lease_ttl: float  # seconds a thread lease lasts without renewal
    context_chars: int = 400_000  # characters of history cached on a thread
    flush_interval: float = 1.0  # seconds between saves of a streaming reply
    max_tool_rounds: int = 8  # times the model may ask for tools in one reply
    run_expiry: float = 600.0  # seconds a run waits for its tool outputs
