"""A batch of messages given to AddMessages, and its checks: each message on
its own, the batch as a whole (tool outputs answer calls, times run
forward), and the batch against the thread it goes to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.core.errors import InvalidArgument
from service.core.limits import (
    MAX_ADDED_MESSAGES,
    MAX_MODEL,
    MAX_TOOL_ARGUMENTS_CHARS,
    MAX_TOOL_CALL_ID,
    MAX_TOOL_NAME,
    MAX_TOOL_OUTPUT_CHARS,
)
from service.core.models import ContextEntry, MemoryMode, Role, ToolCall
from service.core.validation import check_metadata, check_text

__all__ = [
    "CLOCK_SKEW",
    "BatchRequest",
    "NewMessage",
    "check_against_thread",
    "check_batch",
]

# A message's own time may run ahead of Loom's clock by this much (clients'
# clocks drift); anything later is a mistake, not a clock.
CLOCK_SKEW = timedelta(minutes=1)
_ROLES = (Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL)


@dataclass(slots=True)
class NewMessage:
    """A message as the caller gives it to AddMessages."""

    role: Role | None  # None: not set, or not a role Loom knows
    content: str = ""
    create_time: datetime | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    model: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str = ""


@dataclass(slots=True)
class BatchRequest:
    """What the caller sent with AddMessages."""

    messages: list[NewMessage]
    thread_id: str = ""
    assistant_id: str = ""
    user_id: str = ""
    memory: MemoryMode = MemoryMode.UNSPECIFIED
    request_id: str = ""

    def fingerprint(self) -> str:
        """A digest of everything but the request id, to spot a reused id
        (it also differs from any SendMessage's)."""
        messages = [
            [
                m.role.value if m.role else None,
                m.content,
                m.create_time.isoformat() if m.create_time else None,
                sorted(m.metadata.items()),
                m.model,
                [[c.tool_call_id, c.name, c.arguments] for c in m.tool_calls],
                m.tool_call_id,
            ]
            for m in self.messages
        ]
        body = [self.thread_id, self.assistant_id, self.user_id, self.memory.value, messages]
        text = json.dumps(["AddMessages", body], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def check_batch(messages: Sequence[NewMessage], max_content: int, at: datetime) -> None:
    """Check a batch given at ``at`` on its own: 1 to ``MAX_ADDED_MESSAGES``
    messages, each well formed, tool outputs answering calls made earlier in
    the batch (those for calls made before it are checked against the
    thread), and ``create_time`` neither in the future nor going backwards.

    Raises:
        InvalidArgument: the first problem found, naming the message.
    """
    if not messages:
        raise InvalidArgument("messages is empty; send 1 to 1,000 messages", field="messages")
    if len(messages) > MAX_ADDED_MESSAGES:
        raise InvalidArgument(
            f"messages has {len(messages):,} messages; the limit is "
            f"{MAX_ADDED_MESSAGES:,} per call (send the rest in further calls)",
            field="messages",
        )
    previous: datetime | None = None
    calls: set[str] = set()
    for i, message in enumerate(messages):
        _check_message(message, f"messages[{i}]", max_content)
        if message.create_time is not None:
            if message.create_time > at + CLOCK_SKEW:
                raise InvalidArgument(
                    f"messages[{i}].create_time is in the future; give the time the message "
                    "was written, or none",
                    field=f"messages[{i}].create_time",
                )
            if previous is not None and message.create_time < previous:
                raise InvalidArgument(
                    f"messages[{i}].create_time is earlier than the message before it; give "
                    "messages oldest first",
                    field=f"messages[{i}].create_time",
                )
        previous = message.create_time or at
        for call in message.tool_calls:
            if call.tool_call_id in calls:
                raise InvalidArgument(
                    f"messages[{i}] repeats the tool call id {call.tool_call_id!r}",
                    field=f"messages[{i}].tool_calls",
                )
            calls.add(call.tool_call_id)


def _check_message(message: NewMessage, where: str, max_content: int) -> None:
    if message.role not in _ROLES:
        raise InvalidArgument(
            f"{where}.role must be ROLE_USER, ROLE_ASSISTANT, ROLE_SYSTEM or ROLE_TOOL",
            field=f"{where}.role",
        )
    answered = message.role is Role.TOOL
    needs_text = not answered and not (message.role is Role.ASSISTANT and message.tool_calls)
    limit = MAX_TOOL_OUTPUT_CHARS if answered else max_content
    check_text(message.content, f"{where}.content", limit, required=needs_text)
    check_metadata(message.metadata, f"{where}.metadata")
    check_text(message.model, f"{where}.model", MAX_MODEL)
    if message.tool_calls and message.role is not Role.ASSISTANT:
        raise InvalidArgument(
            f"{where}.tool_calls are only for assistant messages", field=f"{where}.tool_calls"
        )
    if answered != bool(message.tool_call_id):
        raise InvalidArgument(
            f"{where}.tool_call_id is required on a tool output and only there",
            field=f"{where}.tool_call_id",
        )
    for j, call in enumerate(message.tool_calls):
        _check_call(call, f"{where}.tool_calls[{j}]")


def _check_call(call: ToolCall, where: str) -> None:
    check_text(call.tool_call_id, f"{where}.tool_call_id", MAX_TOOL_CALL_ID, required=True)
    check_text(call.name, f"{where}.name", MAX_TOOL_NAME, required=True)
    check_text(call.arguments, f"{where}.arguments", MAX_TOOL_ARGUMENTS_CHARS)
    try:
        json.loads(call.arguments or "{}")
    except ValueError:
        raise InvalidArgument(
            f"{where}.arguments must be JSON text, as a model writes it",
            field=f"{where}.arguments",
        ) from None


def check_against_thread(messages: Sequence[NewMessage], context: Sequence[ContextEntry]) -> None:
    """Check a batch against the thread it goes to: each tool output answers
    one call made before it (in the batch, or in the thread's recent
    messages, ``context``) that has no output yet, and the batch's first
    time is not earlier than the thread's last message (the newest entry of
    its context).

    Raises:
        InvalidArgument: the first problem found, naming the message.
    """
    last_time = context[-1].create_time if context else None
    open_calls: set[str] = set()
    for entry in context:
        open_calls |= {c.tool_call_id for c in entry.tool_calls}
        open_calls.discard(entry.tool_call_id)
    for i, message in enumerate(messages):
        if i == 0 and last_time and message.create_time and message.create_time < last_time:
            raise InvalidArgument(
                "messages[0].create_time is earlier than the thread's last message; a thread's "
                "messages run oldest first",
                field="messages[0].create_time",
            )
        open_calls |= {c.tool_call_id for c in message.tool_calls}
        if message.role is Role.TOOL:
            if message.tool_call_id not in open_calls:
                raise InvalidArgument(
                    f"messages[{i}].tool_call_id {message.tool_call_id[:80]!r} answers no tool "
                    "call made before it (or one already answered)",
                    field=f"messages[{i}].tool_call_id",
                )
            open_calls.discard(message.tool_call_id)
