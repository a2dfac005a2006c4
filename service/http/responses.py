"""The Responses API. A response is one round of a Loom reply, held by its
assistant message (id ``resp_`` and the message's digits). ``POST
/v1/responses`` sends a user message (SendMessage; the input items before
it are stored first, by AddMessages) or the outputs of the function calls a
response asked for (SubmitToolOutputs), and answers with the response whole
or as server-sent events (``stream.py``). It goes to the request's
``conversation``, to the conversation of its ``previous_response_id`` (a
fork through that response, by ForkThread, if it is not the latest), or to
a new one (``metadata.assistant_id`` and ``metadata.user_id`` choose its
assistant and user)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from service.core.conversation import BatchRequest, SendRequest
from service.core.errors import InvalidArgument, LoomError, NotFound
from service.core.keys import Caller
from service.core.models import (
    Completed,
    Delta,
    Message,
    ReplyEvent,
    Role,
    Started,
    ToolCallsRequired,
)
from service.http.bodies import ResponseCreate, read
from service.http.conversations import store_items, thread_id_of
from service.http.door import Door
from service.http.errors import error_response, http_error
from service.http.generation import generation_of, text_object
from service.http.inputs import (
    CallOutput,
    Input,
    InputMessage,
    input_items,
    tool_choice_of,
    tools_of,
)
from service.http.listing import input_messages, items_page, paging
from service.http.objects import Echo, message_of_response, response_object
from service.http.stream import ResponseStream, sse

__all__ = ["REFUSED", "create", "get", "list_input_items"]

Events = AsyncGenerator[ReplyEvent, None]


def _set(value: Any) -> bool:
    return value is not None and value is not False and value not in ({}, [])


# Fields Loom refuses when they ask for something, and why.
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "background": (_set, "Loom answers in the request (or streams); it keeps no background jobs"),
    "prompt": (_set, "Loom has no stored prompts; send instructions and input"),
    "max_tool_calls": (_set, "Loom caps a reply's tool rounds with LOOM_MAX_TOOL_ROUNDS"),
    "top_logprobs": (bool, "Loom returns no log probabilities"),
    "context_management": (_set, "Loom fits every prompt to the model's window itself"),
    "moderation": (_set, "Loom runs no moderation"),
    "reasoning": (_set, "this door does not map reasoning options (SendMessage takes an effort)"),
    "store": (lambda v: v is False, "Loom stores every response: it is the conversation's state"),
}


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a response goes: a thread ("" for a new one), the response it
    follows (``previous_response_id``), and whether this request made it."""

    thread_id: str = ""
    after: Message | None = None
    new: bool = False  # a thread this request made (a fork, or for its items)


def _refuse(body: ResponseCreate) -> None:
    for name, (asks, why) in REFUSED.items():
        if asks(getattr(body, name)):
            raise InvalidArgument(f"{name} is not supported: {why}", field=name)


async def _response(door: Door, tenant: str, value: str) -> Message:
    """The assistant message holding the response ``value``.

    Raises:
        NotFound: no such response for this tenant.
    """
    message = await door.threads.find_message(tenant, message_of_response(value))
    if message is None or message.role is not Role.ASSISTANT:
        raise NotFound("response", value[:80])
    return message


async def _target(door: Door, tenant: str, body: ResponseCreate) -> _Target:
    if body.conversation is not None and body.previous_response_id is not None:
        raise InvalidArgument(
            "send conversation or previous_response_id, not both", field="previous_response_id"
        )
    if body.conversation is not None:
        value = body.conversation
        value = value.get("id") if isinstance(value, dict) else value
        if not isinstance(value, str):
            raise InvalidArgument(
                "conversation must be a conversation id or {'id': ...}", field="conversation"
            )
        return _Target(thread_id_of(value))
    if body.previous_response_id is not None:
        after = await _response(door, tenant, body.previous_response_id)
        return _Target(after.thread_id, after)
    return _Target()


async def _submission(
    door: Door, caller: Caller, body: ResponseCreate, outputs: list[CallOutput], target: _Target
) -> Events:
    """The outputs of the calls a response asked for, to its waiting run."""
    if not target.thread_id:
        raise InvalidArgument(
            "function_call_output items answer a response's function calls: send them with "
            "that response's previous_response_id (or its conversation)",
            field="input",
        )
    thread = await door.threads.get(caller.tenant, target.thread_id)
    run = thread.run
    if run is None or (target.after is not None and run.message_id != target.after.message_id):
        raise InvalidArgument(
            "no function calls of this response wait for outputs: send function_call_output "
            "items with the previous_response_id of the response that asked for them",
            field="previous_response_id" if target.after is not None else "conversation",
        )
    if generation_of(body) is not None:
        raise InvalidArgument(
            "function call outputs continue their response under the generation settings it "
            "was created with: send temperature, top_p, max_output_tokens and text without them",
            field="input",
        )
    answers = [(o.call_id, o.output) for o in outputs]
    instructions = body.instructions or ""
    return door.conversation.submit(
        caller.tenant, thread.thread_id, run.run_id, answers, instructions
    )


async def _continued(door: Door, tenant: str, target: _Target) -> _Target:
    """The thread a message continues: the target's, or for a
    ``previous_response_id`` that is not its conversation's latest response,
    a fork of its conversation through that response (ForkThread)."""
    if target.after is None:
        return target
    thread = await door.threads.get(tenant, target.thread_id)
    if thread.message_count - 1 == target.after.sequence:
        return target
    fork = await door.forks.fork(tenant, target.thread_id, target.after.sequence)
    return _Target(fork.thread_id, target.after, new=True)


async def _message(
    door: Door, caller: Caller, body: ResponseCreate, items: list[Input], target: _Target
) -> Events:
    """A user message, to SendMessage; the items before it are stored first
    without a reply (AddMessages)."""
    last = items[-1]
    if not isinstance(last, InputMessage) or last.role is not Role.USER:
        raise InvalidArgument(
            "the last input item must be a user message, which the response answers (add other "
            "items with POST /v1/conversations/{id}/items)",
            field=f"input[{len(items) - 1}]" if len(items) > 1 else "input",
        )
    metadata = dict(body.metadata or {})
    send = SendRequest(
        content=last.text,
        assistant_id=metadata.get("assistant_id", ""),
        user_id=metadata.get("user_id", ""),
        model=body.model or "",
        metadata=metadata,
        tools=tools_of(body.tools),
        tool_choice=tool_choice_of(body.tool_choice),
        instructions=body.instructions or "",
        generation=generation_of(body),
    )
    return _sent(door, caller.tenant, send, items[:-1], target)


async def _sent(
    door: Door, tenant: str, send: SendRequest, before: list[Input], target: _Target
) -> Events:
    """The reply to ``send``, in the thread it continues (``_continued``),
    once the items ``before`` it are stored there. Nothing is written until
    the first event is asked for (so a request the call limits refuse leaves
    nothing); if the reply is refused before it starts, a thread this
    request made is deleted again. Items added to an existing conversation
    stay: its history is append-only."""
    started = False
    target = await _continued(door, tenant, target)
    try:
        if before:
            batch = BatchRequest([], target.thread_id, send.assistant_id, send.user_id)
            added = await store_items(door, tenant, before, "input", batch)
            new = target.new or not target.thread_id
            target = _Target(added.thread.thread_id, target.after, new=new)
        send.thread_id = target.thread_id
        async with contextlib.aclosing(door.conversation.send(tenant, send)) as events:
            async for event in events:
                started = True
                yield event
    except BaseException:
        if not started and target.new:
            await door.threads.delete(tenant, target.thread_id)
        raise


async def _events(door: Door, caller: Caller, body: ResponseCreate) -> Events:
    """The reply the request asks for, checked before it starts.

    Raises:
        LoomError: a request Loom refuses, or an unknown conversation.
    """
    _refuse(body)
    items = input_items(body.input, "input")
    target = await _target(door, caller.tenant, body)
    outputs = [i for i in items if isinstance(i, CallOutput)]
    if len(outputs) == len(items):
        return await _submission(door, caller, body, outputs, target)
    return await _message(door, caller, body, items, target)


def _echo(body: ResponseCreate) -> Echo:
    settings = generation_of(body)  # checked already, by _events
    return Echo(
        metadata=dict(body.metadata or {}),
        instructions=body.instructions,
        tools=tools_of(body.tools) or (),
        tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
        previous_response_id=body.previous_response_id,
        temperature=body.temperature,
        top_p=body.top_p,
        max_output_tokens=body.max_output_tokens,
        text=text_object(settings.response_format if settings is not None else None),
    )


async def _stored(door: Door, tenant: str, event: ReplyEvent) -> Message | None:
    """The reply as stored when ``event`` ends it (None for other events)."""
    if isinstance(event, Completed):
        return event.message
    if isinstance(event, ToolCallsRequired):
        found = await door.threads.find_message(tenant, event.message_id)
        if found is None:
            raise NotFound("response", event.message_id)
        return found
    return None


async def create(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/responses``."""
    body = await read(request, ResponseCreate, door.max_body)
    events = await _events(door, caller, body)
    if body.stream:
        return await _streamed(door, caller, events, _echo(body))
    return await _answered(door, caller, events, _echo(body))


async def _answered(door: Door, caller: Caller, events: Events, echo: Echo) -> Response:
    """The whole response once the reply has ended. A failure after the
    user's message was stored is marked not to be retried (a retry would
    send it again)."""
    started = False
    reply: Message | None = None
    try:
        with door.limiter.stream(caller.tenant, caller.limits):
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    started = started or isinstance(event, Started)
                    reply = await _stored(door, caller.tenant, event) or reply
        if reply is None:
            raise LoomError("the reply ended without its last event", reason="INTERNAL")
    except Exception as exc:  # noqa: BLE001 - every error becomes OpenAI's shape
        return error_response(http_error(exc, door.translators), retry=False if started else None)
    return JSONResponse(response_object(reply, echo))


class _EventStream(StreamingResponse):
    """Server-sent events whose source is closed however the response ends
    (the reply it streams is then settled at once, not when collected)."""

    body_iterator: AsyncGenerator[bytes, None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _streamed(door: Door, caller: Caller, events: Events, echo: Echo) -> Response:
    """The response as server-sent events. Errors before the reply starts
    (a busy conversation, the call limits) are plain HTTP errors."""
    slot = contextlib.ExitStack()
    try:
        slot.enter_context(door.limiter.stream(caller.tenant, caller.limits))
        first = await anext(events)
    except Exception as exc:  # noqa: BLE001 - every error becomes OpenAI's shape
        slot.close()
        await events.aclose()
        return error_response(http_error(exc, door.translators))
    if not isinstance(first, Started):  # the reply loop always starts with it
        slot.close()
        await events.aclose()
        return error_response(http_error(RuntimeError("a reply without a start")))
    stream = ResponseStream(echo, caller.tenant)
    body = _sse(door, caller.tenant, events, stream, first, slot)
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return _EventStream(body, media_type="text/event-stream", headers=headers)


async def _sse(
    door: Door,
    tenant: str,
    events: Events,
    stream: ResponseStream,
    first: Started,
    slot: contextlib.ExitStack,
) -> AsyncGenerator[bytes, None]:
    try:
        for event in stream.started(first, first.thread_id):
            yield sse(event)
        async for reply_event in events:
            for event in await _translate(door, tenant, stream, reply_event):
                yield sse(event)
    except Exception as exc:  # noqa: BLE001 - reported in the stream, in OpenAI's shape
        for event in stream.failed(http_error(exc, door.translators)):
            yield sse(event)
    finally:
        await events.aclose()
        slot.close()


async def _translate(
    door: Door, tenant: str, stream: ResponseStream, event: ReplyEvent
) -> list[dict[str, Any]]:
    if isinstance(event, Delta):
        return stream.delta(event.text)
    stored = await _stored(door, tenant, event)
    return stream.finish(stored) if stored is not None else []


async def get(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/responses/{id}``: the response as stored (with the metadata
    of the message it answered)."""
    if request.query_params.get("stream", "false") != "false":
        raise InvalidArgument(
            "stream is not supported here: read the response whole", field="stream"
        )
    reply = await _response(door, caller.tenant, request.path_params["response_id"])
    inputs = await input_messages(door.threads, caller.tenant, reply)
    metadata = next((m.metadata for m in inputs if m.role is Role.USER), {})
    return JSONResponse(response_object(reply, Echo(metadata=metadata)))


async def list_input_items(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/responses/{id}/input_items``."""
    reply = await _response(door, caller.tenant, request.path_params["response_id"])
    cursor = paging(request.query_params)
    inputs = await input_messages(door.threads, caller.tenant, reply)
    return JSONResponse(items_page(inputs, cursor))
