"""The client's logic as plans: generators that yield commands (make this call,
read the next event, wait, run this function, hand this item to the caller)
and receive their results, so that retries, pagination and reply streams are
written once and carried out by either transport (``_transport.py``).

A failed call is thrown into the plan as a ``LoomError`` at the ``yield``
that asked for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from google.protobuf.message import Message as ProtoMessage

from loom_client import _convert as convert
from loom_client.errors import IncompleteStream, LoomError, RequestInProgress, Unavailable
from loom_client.types import (
    Event,
    MemoriesRecalled,
    MessageStatus,
    RecalledMemory,
    Reply,
    Started,
    TextDelta,
)

__all__ = [
    "Call",
    "Emit",
    "Invoke",
    "Next",
    "Open",
    "Plan",
    "Retry",
    "Rpc",
    "Sleep",
    "pages",
    "reply_stream",
    "unary",
]

T = TypeVar("T")
R = TypeVar("R", bound=ProtoMessage)


@dataclass(frozen=True, slots=True)
class Rpc(Generic[R]):
    """One RPC of ``loom.v1``: its method path and response type."""

    service: str
    method: str
    response: type[R]

    @property
    def path(self) -> str:
        return f"/loom.v1.{self.service}/{self.method}"


# ------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class Call:
    """Make a unary call; the result is the response message."""

    rpc: Rpc[Any]
    request: ProtoMessage


@dataclass(frozen=True, slots=True)
class Open:
    """Start a server-streaming call (closing any stream opened before)."""

    rpc: Rpc[Any]
    request: ProtoMessage


@dataclass(frozen=True, slots=True)
class Next:
    """Read the open stream; the result is its next message, or None at its end."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait ``seconds``."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Invoke:
    """Run a caller's function (awaiting it if it returns an awaitable); its
    exception, if any, is thrown into the plan."""

    function: Callable[..., Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand ``item`` to the caller iterating the plan."""

    item: Any


Command = Call | Open | Next | Sleep | Invoke | Emit
Plan = Generator[Command, Any, T]


# ------------------------------------------------------------------ retries


@dataclass(frozen=True, slots=True)
class Retry:
    """Back-off for calls that failed UNAVAILABLE: ``initial`` seconds,
    doubling up to ``maximum``, with jitter, at most ``max_retries`` times; a
    ``RetryInfo`` from the server is a floor."""

    max_retries: int = 4
    initial: float = 0.25
    maximum: float = 8.0

    def delay(self, attempt: int, error: LoomError) -> float | None:
        """Seconds to wait before retry ``attempt + 1``, or None for no retry."""
        if attempt >= self.max_retries:
            return None
        backoff = min(self.maximum, self.initial * 2.0**attempt)
        jittered = backoff * (0.5 + random.random() / 2)  # noqa: S311 - jitter, not crypto
        return max(jittered, error.retry_delay or 0.0)


def unary(rpc: Rpc[R], request: ProtoMessage, retry: Retry, *, idempotent: bool) -> Plan[R]:
    """One unary call; an idempotent one is retried while UNAVAILABLE."""
    attempt = 0
    while True:
        try:
            response: R = yield Call(rpc, request)
            return response
        except Unavailable as error:
            delay = retry.delay(attempt, error) if idempotent else None
            if delay is None:
                raise
        attempt += 1
        yield Sleep(delay)


def pages(
    rpc: Rpc[R],
    request_for: Callable[[str], ProtoMessage],
    items: Callable[[R], Iterable[Any]],
    retry: Retry,
) -> Plan[None]:
    """Emit every item of every page of a List call (AIP-158), a page at a
    time as the caller reads on."""
    token = ""
    while True:
        page = yield from unary(rpc, request_for(token), retry, idempotent=True)
        for item in items(page):
            yield Emit(item)
        token = getattr(page, "next_page_token", "")
        if not token:
            return


# ------------------------------------------------------------------ reply streams


@dataclass(slots=True)
class _Given:
    """What the caller has been given of one reply, across attempts."""

    started: bool = False
    memories: list[RecalledMemory] = field(default_factory=list)
    text: int = 0


@dataclass(slots=True)
class _Attempt:
    """One attempt's stream, read into events and, at its end, the reply."""

    given: _Given
    started: Started | None = None
    text: list[str] = field(default_factory=list)
    reply: Reply | None = None

    def feed(self, event: Any) -> list[Event]:
        """The events to hand on for one message of the stream: none for a
        part the caller already had from an earlier attempt, for a kind of
        event this client does not know, or for the last event, which is
        kept as ``reply``."""
        kind = event.WhichOneof("event")
        if kind == "started":
            self.started = convert.started(event.started)
            fresh = not self.given.started
            self.given.started = True
            return [self.started] if fresh else []
        if kind == "memory":
            if self.given.memories:
                return []
            self.given.memories = convert.recalled(event.memory)
            return [MemoriesRecalled(self.given.memories)]
        if kind == "delta":
            start = sum(map(len, self.text))
            self.text.append(event.delta.text)
            unseen = event.delta.text[max(0, self.given.text - start) :]
            self.given.text = max(self.given.text, start + len(event.delta.text))
            return [TextDelta(unseen)] if unseen else []
        if kind == "completed":
            self.reply = self._completed(event.completed)
        elif kind == "tool_calls_required":
            self.reply = self._tools_required(event.tool_calls_required)
        return []

    def _common(self) -> dict[str, Any]:
        started = self.started
        if started is None:
            raise IncompleteStream("the reply stream ended without its `started` event")
        return {
            "thread_id": started.thread_id,
            "model": started.model,
            "assistant_id": started.assistant_id,
            "user_message_id": started.user_message_id,
            "thread_created": started.thread_created,
            "memories": self.given.memories,
        }

    def _completed(self, completed: Any) -> Reply:
        message = convert.message(completed.message)
        common = self._common()
        common["model"] = message.model or common["model"]
        return Reply(
            **common,
            message_id=message.message_id,
            content=message.content,
            status=message.status,
            usage=message.usage,
            tool_calls=message.tool_calls,
            run_id=message.run_id,
            memory_operation_id=completed.memory_operation_id,
            schema_error=message.schema_error,
        )

    def _tools_required(self, required: Any) -> Reply:
        return Reply(
            **self._common(),
            message_id=required.message_id,
            content="".join(self.text),
            status=MessageStatus.REQUIRES_ACTION,
            tool_calls=convert.tool_calls(required.tool_calls),
            run_id=required.run_id,
            expire_time=convert.timestamp(required, "expire_time"),
        )


def _resend(error: LoomError, attempt: _Attempt, tries: int) -> bool:
    """Whether a reply stream that failed with ``error`` is sent again.

    UNAVAILABLE is, unless Loom reported it after reply text had arrived: that
    reply is settled and stored, and sending again would only replay it.
    Before any text, the same request_id runs the model again in the same
    message slot; after a broken connection (no reason from Loom) it replays
    the reply as stored. A second attempt may find the first still winding
    down (REQUEST_IN_PROGRESS), which is waited out the same way.
    """
    if isinstance(error, RequestInProgress):
        return tries > 0
    if not isinstance(error, Unavailable):
        return False
    return not error.reason or not attempt.text


def reply_stream(
    rpc: Rpc[Any], request: ProtoMessage, retry: Retry, *, resend: bool
) -> Plan[Reply]:
    """Stream one reply, emitting its events, and return it. With ``resend``
    (the request carries a ``request_id``), a failed attempt is sent again,
    and events the caller already has are not emitted twice."""
    given = _Given()
    tries = 0
    while True:
        attempt = _Attempt(given)
        yield Open(rpc, request)
        try:
            while (event := (yield Next())) is not None:
                for item in attempt.feed(event):
                    yield Emit(item)
            if attempt.reply is None:
                raise IncompleteStream("the reply stream ended before the reply was complete")
            return attempt.reply
        except LoomError as error:
            delay = retry.delay(tries, error) if resend and _resend(error, attempt, tries) else None
            if delay is None:
                raise
        tries += 1
        yield Sleep(delay)
