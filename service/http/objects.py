"""Loom's objects in OpenAI's shapes: a thread as a conversation, a message
as conversation items, an assistant message as a response, and lists."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.core import ids
from service.core.errors import InvalidArgument, NotFound
from service.core.models import Message, MessageStatus, Role, Thread, ToolCall, ToolSpec, Usage

__all__ = [
    "Echo",
    "conversation_object",
    "function_call_item",
    "items_of",
    "list_object",
    "message_item",
    "message_of_item",
    "message_of_response",
    "response_id",
    "response_object",
    "seconds",
    "tool_object",
]

JSON = dict[str, Any]

_RESPONSE = "resp"
_CALL = "fc"
# The digits are a message id's; ids.check_id says how many (so a change of
# the id format reaches these ids too).
_RESPONSE_ID = re.compile(rf"^{_RESPONSE}_([0-9a-f]{{1,64}})$")
_CALL_ID = re.compile(rf"^{_CALL}_([0-9a-f]{{1,64}})_(\d{{1,4}})$")

# A message's status as an item's; a reply cut short or failed is incomplete.
_ITEM_STATUS = {
    MessageStatus.IN_PROGRESS: "in_progress",
    MessageStatus.COMPLETE: "completed",
    MessageStatus.INCOMPLETE: "incomplete",
    MessageStatus.FAILED: "incomplete",
    MessageStatus.REQUIRES_ACTION: "completed",
    MessageStatus.EXPIRED: "completed",
    MessageStatus.CANCELLED: "completed",
}
# A reply's status as its response's. A round that asked for tools is a
# completed response whose output is the calls, whatever became of them.
_RESPONSE_STATUS = {
    MessageStatus.IN_PROGRESS: "in_progress",
    MessageStatus.COMPLETE: "completed",
    MessageStatus.INCOMPLETE: "incomplete",
    MessageStatus.FAILED: "failed",
    MessageStatus.REQUIRES_ACTION: "completed",
    MessageStatus.EXPIRED: "completed",
    MessageStatus.CANCELLED: "completed",
}


def seconds(when: datetime | None) -> int:
    """A time as OpenAI's Unix seconds (0 when unknown)."""
    return int(when.timestamp()) if when is not None else 0


def _digits(message_id: str) -> str:
    return message_id.partition("_")[2]


def response_id(message_id: str) -> str:
    """The id of the response an assistant message holds."""
    return f"{_RESPONSE}_{_digits(message_id)}"


def message_of_response(value: str) -> str:
    """The id of the assistant message a response id names.

    Raises:
        NotFound: not a response id (so no such response).
    """
    found = _RESPONSE_ID.match(value)
    message_id = _message_id(found.group(1)) if found else None
    if message_id is None:
        raise NotFound("response", value[:80])
    return message_id


def _message_id(digits: str) -> str | None:
    """The message id of those digits (None if no message has such an id)."""
    try:
        return ids.check_id(ids.MESSAGE, f"{ids.MESSAGE}_{digits}", "id")
    except InvalidArgument:
        return None


def message_of_item(value: str) -> tuple[str, int | None]:
    """The message an item id names, and the index of the call for a
    function call item (None for the message's own item).

    Raises:
        NotFound: not an item id (so no such item).
    """
    if value.startswith(f"{ids.MESSAGE}_") and _message_id(value.partition("_")[2]):
        return value, None
    call = _CALL_ID.match(value)
    message_id = _message_id(call.group(1)) if call else None
    if call is None or message_id is None:
        raise NotFound("item", value[:80])
    return message_id, int(call.group(2))


def conversation_object(thread: Thread) -> JSON:
    """A thread as a conversation."""
    return {
        "id": thread.thread_id,
        "object": "conversation",
        "created_at": seconds(thread.create_time),
        "metadata": dict(thread.metadata),
    }


def message_item(message: Message) -> JSON:
    """A message's own item: its text as input (user, system) or output
    (assistant) text."""
    if message.role is Role.ASSISTANT:
        part: JSON = {
            "type": "output_text",
            "text": message.content,
            "annotations": [],
            "logprobs": [],
        }
    else:
        part = {"type": "input_text", "text": message.content}
    return {
        "type": "message",
        "id": message.message_id,
        "status": _ITEM_STATUS[message.status],
        "role": message.role.value,
        "content": [part],
    }


def function_call_item(message_id: str, index: int, call: ToolCall, status: str) -> JSON:
    """The ``index``-th tool call of an assistant message as an item."""
    return {
        "type": "function_call",
        "id": f"{_CALL}_{_digits(message_id)}_{index}",
        "call_id": call.tool_call_id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def items_of(message: Message) -> list[JSON]:
    """A message as conversation items, in order: a tool output is a
    function call output; an assistant message is its text (if it has some,
    or no calls) then one function call per tool call."""
    if message.role is Role.TOOL:
        return [
            {
                "type": "function_call_output",
                "id": message.message_id,
                "call_id": message.tool_call_id,
                "output": message.content,
                "status": "completed",
            }
        ]
    items = [message_item(message)] if message.content or not message.tool_calls else []
    status = _ITEM_STATUS[message.status]
    items += [
        function_call_item(message.message_id, i, call, status)
        for i, call in enumerate(message.tool_calls)
    ]
    return items


def list_object(data: Sequence[JSON], has_more: bool) -> JSON:
    """One page of a list, with the cursors OpenAI's clients page by."""
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def tool_object(tool: ToolSpec) -> JSON:
    """A function tool as a response shows it."""
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description or None,
        "parameters": tool.parameters or None,
        "strict": None,
    }


@dataclass(frozen=True, slots=True)
class Echo:
    """What a response repeats of the request that made it (a response read
    later by id repeats only what Loom stores: its metadata)."""

    metadata: Mapping[str, str] = field(default_factory=dict)
    instructions: str | None = None
    tools: Sequence[ToolSpec] = ()
    tool_choice: Any = "auto"
    previous_response_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: Mapping[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})


def _usage(usage: Usage | None) -> JSON | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }


def _outcome(reply: Message) -> tuple[str, JSON | None, JSON | None]:
    """The response's status, ``error`` and ``incomplete_details``."""
    status = _RESPONSE_STATUS[reply.status]
    if status == "failed":
        return status, {"code": "server_error", "message": reply.error or "the reply failed"}, None
    if status == "incomplete" and not reply.error:  # the model's length limit
        return status, None, {"reason": "max_output_tokens"}
    return status, None, None


def response_object(reply: Message, echo: Echo, output: Sequence[JSON] | None = None) -> JSON:
    """The response an assistant message holds (``output``: its items so far,
    while it streams; else the message's own)."""
    status, error, incomplete = _outcome(reply)
    return {
        "id": response_id(reply.message_id),
        "object": "response",
        "created_at": seconds(reply.create_time),
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": reply.model,
        "output": list(items_of(reply) if output is None else output),
        "usage": _usage(reply.usage),
        "conversation": {"id": reply.thread_id},
        "previous_response_id": echo.previous_response_id,
        "instructions": echo.instructions,
        "metadata": dict(echo.metadata),
        "tools": [tool_object(t) for t in echo.tools],
        "tool_choice": echo.tool_choice,
        "parallel_tool_calls": True,
        "temperature": echo.temperature,
        "top_p": echo.top_p,
        "max_output_tokens": echo.max_output_tokens,
        "store": True,
        "text": dict(echo.text),
        "truncation": "auto",
        # Loom's own field, set only when a reply misses the JSON Schema of its
        # text.format: OpenAI's shape has no place for that.
        **({"schema_error": reply.schema_error} if reply.schema_error else {}),
    }
