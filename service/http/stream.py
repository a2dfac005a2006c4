"""One response's server-sent events, numbered, from Loom's reply events:

``response.created`` and ``response.in_progress`` when the reply starts;
for its text, ``response.output_item.added`` (a message item) and
``response.content_part.added``, a ``response.output_text.delta`` per
delta, then ``response.output_text.done``, ``response.content_part.done``
and ``response.output_item.done``; for each function call the model asked
for, ``response.output_item.added``, ``response.function_call_arguments.delta``
(Loom receives the arguments whole, so one delta) and ``.done``, and
``response.output_item.done``; last ``response.completed`` (or
``response.incomplete`` at the model's length limit), or ``error`` and
``response.failed`` when the reply fails after it started.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from service.core.models import Message, MessageStatus, Role, Started
from service.http.errors import HttpError, error_event
from service.http.objects import (
    Echo,
    function_call_item,
    message_item,
    response_object,
)

__all__ = ["ResponseStream", "sse"]

JSON = dict[str, Any]
_FINAL = {"completed": "response.completed", "incomplete": "response.incomplete"}


def sse(event: JSON) -> bytes:
    """One server-sent event, named after its type."""
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class ResponseStream:
    """The events of one response, in order, each with the next sequence
    number. Pure: the caller feeds it Loom's events and the stored reply."""

    def __init__(self, echo: Echo, tenant: str) -> None:
        self._echo = echo
        self._tenant = tenant
        self._sequence = 0
        self._reply: Message | None = None
        self._open = False  # a message item is streaming
        self._output: list[JSON] = []  # items done

    def _numbered(self, *events: JSON) -> list[JSON]:
        for event in events:
            event["sequence_number"] = self._sequence
            self._sequence += 1
        return list(events)

    @property
    def _current(self) -> Message:
        if self._reply is None:
            raise RuntimeError("a response's events start with started()")
        return self._reply

    def _snapshot(self, status: str = "in_progress", error: JSON | None = None) -> JSON:
        response = response_object(self._current, self._echo, output=self._output)
        response["status"] = status
        if error is not None:
            response["error"] = error
        return response

    def started(self, event: Started, thread_id: str) -> list[JSON]:
        """The reply is stored and about to stream."""
        self._reply = Message(
            message_id=event.assistant_message_id,
            tenant=self._tenant,
            thread_id=thread_id,
            role=Role.ASSISTANT,
            content="",
            status=MessageStatus.IN_PROGRESS,
            model=event.model,
            create_time=datetime.now(UTC),
        )
        return self._numbered(
            {"type": "response.created", "response": self._snapshot()},
            {"type": "response.in_progress", "response": self._snapshot()},
        )

    def _open_text(self) -> list[JSON]:
        self._open = True
        item = message_item(self._current)
        item["content"] = []
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        where = {"item_id": self._current.message_id, "output_index": len(self._output)}
        return [
            {"type": "response.output_item.added", "output_index": len(self._output), "item": item},
            {"type": "response.content_part.added", **where, "content_index": 0, "part": part},
        ]

    def delta(self, text: str) -> list[JSON]:
        """A piece of the reply's text."""
        opening = [] if self._open else self._open_text()
        where = {"item_id": self._current.message_id, "output_index": len(self._output)}
        delta = {"type": "response.output_text.delta", **where, "content_index": 0}
        return self._numbered(*opening, {**delta, "delta": text, "logprobs": []})

    def _close_text(self, reply: Message) -> list[JSON]:
        item = message_item(reply)
        part = item["content"][0]
        where = {"item_id": reply.message_id, "output_index": len(self._output)}
        text = {"text": reply.content, "logprobs": []}
        done = [
            {"type": "response.output_text.done", **where, "content_index": 0, **text},
            {"type": "response.content_part.done", **where, "content_index": 0, "part": part},
            {"type": "response.output_item.done", "output_index": len(self._output), "item": item},
        ]
        self._output.append(item)
        self._open = False
        return done

    def _calls(self, reply: Message) -> list[JSON]:
        events: list[JSON] = []
        for i, call in enumerate(reply.tool_calls):
            index = len(self._output)
            added = function_call_item(reply.message_id, i, call, "in_progress") | {"arguments": ""}
            done = function_call_item(reply.message_id, i, call, "completed")
            where = {"item_id": added["id"], "output_index": index}
            arguments = {"name": call.name, "arguments": call.arguments}
            events += [
                {"type": "response.output_item.added", "output_index": index, "item": added},
                {
                    "type": "response.function_call_arguments.delta",
                    **where,
                    "delta": call.arguments,
                },
                {"type": "response.function_call_arguments.done", **where, **arguments},
                {"type": "response.output_item.done", "output_index": index, "item": done},
            ]
            self._output.append(done)
        return events

    def finish(self, reply: Message) -> list[JSON]:
        """The reply as stored at its end (text, calls, usage): the open text
        closes, the calls follow, and the response ends."""
        self._reply = reply
        events = self._open_text() if not self._open and not reply.tool_calls else []
        if self._open:
            events += self._close_text(reply)
        events += self._calls(reply)
        final = response_object(reply, self._echo)
        kind = _FINAL.get(final["status"], "response.failed")
        return self._numbered(*events, {"type": kind, "response": final})

    def failed(self, error: HttpError) -> list[JSON]:
        """The reply failed after it started (it is stored FAILED or
        INCOMPLETE with what arrived)."""
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failure = self._snapshot("failed", {"code": code, "message": error.message})
        return self._numbered(error_event(error), {"type": "response.failed", "response": failure})
