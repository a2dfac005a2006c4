"""Narrow interfaces the domain needs from its adapters.

``service.store`` implements the stores over MongoDB and ``service.llm``
implements ``ChatModel`` over an OpenAI-compatible endpoint; the domain sees
only these protocols. The thread and message stores are written in
``service.core.thread_ports`` and imported from here like the rest; the
lease store's port is ``lease_port.py``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeAlias

from service.core.errors import LoomError
from service.core.generation import GenerationSettings
from service.core.models import (
    Assistant,
    Message,
    Recalled,
    ToolCall,
    ToolSpec,
    Usage,
)
from service.core.thread_ports import (
    MessageStore,
    PendingThreadDelete,
    ThreadClaim,
    ThreadStore,
)

__all__ = [
    "ApiKey",
    "ApiKeyStore",
    "AssistantStore",
    "ChatChunk",
    "ChatModel",
    "ChatTurn",
    "Job",
    "JobState",
    "JobStore",
    "MemoryPort",
    "MessageStore",
    "PendingThreadDelete",
    "Recalled",
    "RequestRecord",
    "RequestStore",
    "TenantLimits",
    "ThreadClaim",
    "ThreadStore",
    "TokenCounter",
    "Translate",
]

Translate: TypeAlias = Callable[[BaseException], LoomError | None]
"""An adapter's translation of its own exceptions into domain errors (None:
not one it knows), built by the wiring: the store's turns what waiting
cures into ``DatabaseUnavailable``."""


class AssistantStore(Protocol):
    """Assistants, always scoped to a tenant: every read and write names it,
    so another tenant's assistant is never read, not even to be refused."""

    async def insert(self, assistant: Assistant) -> None: ...
    async def get(self, tenant: str, assistant_id: str) -> Assistant | None: ...
    async def default_id(self, tenant: str) -> str | None:
        """The id the tenant's default assistant was last given, if any."""

    async def claim_default(self, tenant: str, assistant_id: str, replacing: str | None) -> str:
        """Make ``assistant_id`` the tenant's default unless another claim got
        there first (or the default is no longer ``replacing``); return the
        default's id as it now stands. Concurrent claims that replace the
        same default agree on one winner."""

    async def find_page(
        self, tenant: str, limit: int, after: tuple[datetime, str] | None
    ) -> list[Assistant]:
        """Newest first (by create_time, then id), after ``after``: the
        create_time and id of the last assistant of the previous page."""

    async def update(
        self, tenant: str, assistant_id: str, changes: dict[str, object], now: datetime
    ) -> Assistant | None: ...
    async def mark_deleting(self, tenant: str, assistant_id: str) -> bool:
        """Hide the assistant from every read; False if there was none."""

    async def delete(self, tenant: str, assistant_id: str) -> None: ...
    async def pending_deletes(self) -> list[tuple[str, str]]:
        """(tenant, assistant_id) of deletions that a crash interrupted."""


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


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's overrides of the call limits; None keeps the default, 0 is
    unlimited (see ``service.core.limits``)."""

    rate: float | None = None  # calls per second per API key
    burst: int | None = None  # calls a key may make at once
    streams: int | None = None  # concurrent reply streams of the tenant


class ApiKeyStore(Protocol):
    """API keys, stored as SHA-256 digests, and their tenants' limits."""

    async def insert(self, key: ApiKey, digest: str) -> None: ...
    async def upsert(self, key: ApiKey, digest: str) -> None: ...
    async def find(self, digest: str) -> tuple[ApiKey, str] | None:
        """The key with that digest and the digest as stored, if any."""

    async def list_keys(self, tenant: str | None) -> list[ApiKey]: ...
    async def revoke(self, key_id: str, now: datetime) -> bool: ...
    async def limits(self, tenant: str) -> TenantLimits:
        """The tenant's overrides (all None when it has none)."""

    async def set_limits(self, tenant: str, limits: TenantLimits) -> None:
        """Replace the tenant's overrides (all None removes them)."""


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a prompt, in the OpenAI chat format's terms."""

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """A piece of a streamed reply: text, and at the end usage and finish reason."""

    text: str = ""
    usage: Usage | None = None
    finish_reason: str | None = None
    model: str = ""
    tool_calls: tuple[ToolCall, ...] = ()  # complete calls, sent once at the end


class ChatModel(Protocol):
    """A streaming chat model."""

    @property
    def configured(self) -> bool:
        """False when no endpoint is set up; replies then fail with a hint."""

    async def complete(
        self,
        model: str,
        turns: Sequence[ChatTurn],
        *,
        json: bool = False,
        schema: Mapping[str, Any] | None = None,
    ) -> str:
        """One reply, not streamed; with ``json`` the endpoint is asked for a
        JSON object, with ``schema`` for one that follows that JSON schema
        (its ``title`` names it), as far as the model supports either;
        callers still validate what comes back.

        Raises:
            Unavailable, ResourceExhausted, FailedPrecondition: as ``stream``.
        """

    def stream(
        self,
        model: str,
        turns: Sequence[ChatTurn],
        tools: Sequence[ToolSpec] = (),
        tool_choice: str = "",
        generation: GenerationSettings | None = None,
    ) -> AsyncGenerator[ChatChunk, None]:
        """Stream a reply, written with ``generation``'s settings (unset ones
        left to the endpoint). Retries transient failures until the first
        chunk.

        Raises:
            Unavailable, ResourceExhausted, DeadlineExceeded, FailedPrecondition:
                the endpoint failed (after retries where that makes sense).
        """


class JobState(enum.StrEnum):
    """Where a background job stands."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(slots=True)
class Job:
    """A durable background job (memory extraction, summarising). ``payload``
    says what to do; ``checkpoint`` keeps what an attempt already worked out
    (a model's answer, say) so a retry after a crash need not redo it.
    ``attempts`` counts runs that failed through the job's own fault (or
    succeeded); ``waits`` counts consecutive runs that found a dependency
    down. ``owner`` is the runner that last claimed it."""

    job_id: str
    kind: str
    tenant: str
    payload: dict[str, Any]
    state: JobState
    create_time: datetime
    update_time: datetime
    next_run_time: datetime
    attempts: int = 0
    checkpoint: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    trace_context: dict[str, str] = field(default_factory=dict)
    owner: str = ""
    waits: int = 0


class JobStore(Protocol):
    """Jobs, by tenant and id (a read names the tenant, so another tenant's
    job is never read)."""

    async def insert(self, job: Job) -> bool:
        """Record a new job; False if one with its id exists already."""

    async def get(self, tenant: str, job_id: str) -> Job | None: ...
    async def save(self, job: Job, *, claim: bool = False) -> bool:
        """Write the job's state, attempts, checkpoint, result and error, only
        if ``job.owner`` is still the runner the store has; False when another
        runner claimed it since. ``claim`` writes unconditionally, making
        ``job.owner`` the runner (its caller has just taken the job's lease).
        On FerretDB 1.x the condition is checked just before the write, not
        with it (see ``MongoLeaseStore``): the lease is the real guard."""

    async def due(
        self, now: datetime, stale_before: datetime, limit: int, skip_tenants: Sequence[str] = ()
    ) -> list[Job]:
        """PENDING jobs whose time has come, and RUNNING ones not touched
        since ``stale_before`` (their runner may have died), oldest first,
        leaving out the tenants in ``skip_tenants``."""

    async def backlog(self) -> tuple[int, datetime | None]:
        """How many jobs are PENDING or RUNNING, and the oldest one's creation time."""

    async def find(self, state: JobState | None, tenant: str | None, limit: int) -> list[Job]:
        """Jobs in ``state`` (any when None) of ``tenant`` (any when None),
        most recently updated first."""

    async def requeue(self, tenant: str, job_id: str, now: datetime) -> bool:
        """Put a FAILED job back to PENDING, due now, with its attempts
        reset; False if there is no FAILED job with that id."""


class MemoryPort(Protocol):
    """What a reply needs from the assistant's memory."""

    async def recall(
        self, tenant: str, assistant_id: str, user_id: str, thread_id: str, query: str
    ) -> list[Recalled]:
        """Memories relevant to ``query`` in the user's scope (theirs and the
        assistant-wide ones), best first."""

    async def remember(
        self, tenant: str, assistant_id: str, user_id: str, thread_id: str, message: Message
    ) -> None:
        """Index a user's message at once, so the next request can recall it."""

    async def schedule_extraction(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        user_message_id: str,
        reply_message_id: str,
        model: str,
        tool_outputs: Sequence[str] = (),
    ) -> str:
        """Record a durable job that extracts facts from the exchange (and
        ``tool_outputs``, when the assistant opted in); return its id."""

    async def remember_all(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        messages: Sequence[Message],
    ) -> None:
        """Index user messages added without a reply, in one batch."""

    async def unremember(self, tenant: str, assistant_id: str, messages: Sequence[Message]) -> None:
        """Delete the episodic memories ``remember_all`` wrote for ``messages``
        (their thread was deleted while they were being written)."""

    async def schedule_batch_extraction(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        messages: Sequence[Message],
        model: str,
    ) -> str:
        """Record one durable job that extracts facts from a batch of messages
        added without a reply (its user messages, the others as context);
        return its id."""

    async def forget_thread(self, tenant: str, assistant_id: str, thread_id: str) -> int:
        """Delete every memory learnt in the thread."""

    async def forget_assistant(self, tenant: str, assistant_id: str) -> None:
        """Delete every memory of the assistant."""


class TokenCounter(Protocol):
    """Counts tokens offline, and knows models' context windows."""

    def count(self, text: str) -> int:
        """Tokens of ``text`` in the counter's base encoding, counted in one go."""

    async def count_async(self, text: str) -> int:
        """Tokens of ``text``, as ``count``, without holding the event loop
        for long however long the text (up to 100,000 characters and more)."""

    def message_overhead(self) -> int:
        """Tokens each chat message costs beyond its text."""

    def prompt_overhead(self) -> int:
        """Tokens a whole prompt costs beyond its messages."""

    def ratio(self, model: str) -> float:
        """How many of ``model``'s tokens one base token is worth."""

    def calibrate(self, model: str, base_tokens: int, reported_tokens: int) -> None:
        """Learn ``ratio`` from the input tokens an endpoint reported."""

    def context_window(self, model: str, assistant_window: int = 0) -> int:
        """The context window to plan ``model``'s prompts for."""
