"""Narrow interfaces the domain needs from its adapters.

``service.store`` implements the stores over MongoDB and ``service.llm``
implements ``ChatModel`` over an OpenAI-compatible endpoint; the domain sees
only these protocols.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from service.core.models import Assistant, Message, MessageStatus, Thread, Usage

__all__ = [
    "ApiKey",
    "ApiKeyStore",
    "AssistantStore",
    "ChatChunk",
    "ChatModel",
    "ChatTurn",
    "LeaseOutcome",
    "MessageStore",
    "RequestRecord",
    "RequestStore",
    "ThreadStore",
]


class AssistantStore(Protocol):
    """Assistants, always scoped to a tenant."""

    async def insert(self, assistant: Assistant) -> None: ...
    async def get(self, tenant: str, assistant_id: str) -> Assistant | None: ...
    async def ensure(self, assistant: Assistant) -> Assistant:
        """Insert ``assistant`` unless one with its id exists; return the stored one."""

    async def find_page(self, tenant: str, limit: int, after: str | None) -> list[Assistant]: ...
    async def update(
        self, tenant: str, assistant_id: str, changes: dict[str, object], now: datetime
    ) -> Assistant | None: ...
    async def mark_deleting(self, tenant: str, assistant_id: str) -> bool:
        """Hide the assistant from every read; False if there was none."""

    async def delete(self, tenant: str, assistant_id: str) -> None: ...
    async def pending_deletes(self) -> list[tuple[str, str]]:
        """(tenant, assistant_id) of deletions that a crash interrupted."""


class LeaseOutcome(enum.Enum):
    """Result of trying to take a thread's reply lease."""

    ACQUIRED = "acquired"
    TAKEN_OVER = "taken_over"  # the previous holder's lease had expired
    BUSY = "busy"
    MISSING = "missing"


class ThreadStore(Protocol):
    """Threads, always scoped to a tenant."""

    async def insert(self, thread: Thread) -> None: ...
    async def get(self, tenant: str, thread_id: str) -> Thread | None: ...
    async def find_page(
        self, tenant: str, assistant_id: str, user_id: str, limit: int, after: str | None
    ) -> list[Thread]: ...
    async def ids_of_assistant(self, tenant: str, assistant_id: str) -> list[str]: ...
    async def mark_deleting(self, tenant: str, thread_id: str) -> bool: ...
    async def delete(self, tenant: str, thread_id: str) -> None: ...
    async def pending_deletes(self) -> list[tuple[str, str]]: ...
    async def acquire_lease(
        self, tenant: str, thread_id: str, owner: str, expires: datetime, now: datetime
    ) -> LeaseOutcome: ...
    async def renew_lease(
        self, tenant: str, thread_id: str, owner: str, expires: datetime
    ) -> bool: ...
    async def release_lease(self, tenant: str, thread_id: str, owner: str) -> None: ...
    async def lease_expired(self, tenant: str, thread_id: str, now: datetime) -> bool:
        """True when nobody holds a live lease on the thread."""


class MessageStore(Protocol):
    """Messages, always scoped to a tenant and a thread."""

    async def append(self, message: Message) -> Message:
        """Store ``message`` at the thread's next sequence number (no gaps, no
        duplicates, even with concurrent writers) and return it with that
        number."""

    async def get(self, tenant: str, message_id: str) -> Message | None: ...
    async def finish(
        self,
        tenant: str,
        message_id: str,
        *,
        content: str,
        status: MessageStatus,
        usage: Usage | None = None,
        error: str = "",
    ) -> Message | None: ...
    async def save_progress(self, tenant: str, message_id: str, content: str) -> None: ...
    async def restart(self, tenant: str, message_id: str, model: str) -> bool:
        """Put a FAILED, empty message back IN_PROGRESS for a retry."""

    async def find_page(
        self, tenant: str, thread_id: str, limit: int, after: int | None, descending: bool
    ) -> list[Message]: ...
    async def history(self, tenant: str, thread_id: str, before: int) -> list[Message]:
        """Messages with sequence below ``before``, oldest first."""

    async def mark_stale(self, tenant: str, thread_id: str) -> int:
        """Mark IN_PROGRESS messages INCOMPLETE (their writer died)."""

    async def delete_thread(self, tenant: str, thread_id: str) -> int: ...


@dataclass(slots=True)
class RequestRecord:
    """What an idempotent SendMessage did the first time."""

    fingerprint: str
    create_time: datetime
    thread_id: str = ""
    thread_created: bool = False
    assistant_id: str = ""
    user_message_id: str = ""
    assistant_message_id: str = ""
    model: str = ""


class RequestStore(Protocol):
    """Idempotency records of SendMessage request ids (AIP-155)."""

    async def claim(
        self, tenant: str, request_id: str, fingerprint: str, now: datetime
    ) -> RequestRecord | None:
        """Claim the id; None if this call claimed it, else the existing record."""

    async def take_over(self, tenant: str, request_id: str, stale: datetime, now: datetime) -> bool:
        """Claim an unbound record created at ``stale`` (its claimant died)."""

    async def bind(self, tenant: str, request_id: str, record: RequestRecord) -> None: ...
    async def release(self, tenant: str, request_id: str) -> None: ...


@dataclass(slots=True)
class ApiKey:
    """A stored API key (never the secret itself)."""

    key_id: str
    tenant: str
    prefix: str
    create_time: datetime
    revoke_time: datetime | None = None


class ApiKeyStore(Protocol):
    """API keys, stored as SHA-256 digests."""

    async def insert(self, key: ApiKey, digest: str) -> None: ...
    async def upsert(self, key: ApiKey, digest: str) -> None: ...
    async def find(self, digest: str) -> tuple[ApiKey, str] | None:
        """The key with that digest and the digest as stored, if any."""

    async def list_keys(self, tenant: str | None) -> list[ApiKey]: ...
    async def revoke(self, key_id: str, now: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a prompt, in the OpenAI chat format's terms."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """A piece of a streamed reply: text, and at the end usage and finish reason."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str = ""


class ChatModel(Protocol):
    """A streaming chat model."""

    @property
    def configured(self) -> bool:
        """False when no endpoint is set up; replies then fail with a hint."""

    def stream(self, model: str, turns: Sequence[ChatTurn]) -> AsyncGenerator[ChatChunk, None]:
        """Stream a reply. Retries transient failures until the first chunk.

        Raises:
            Unavailable, ResourceExhausted, DeadlineExceeded, FailedPrecondition:
                the endpoint failed (after retries where that makes sense).
        """
