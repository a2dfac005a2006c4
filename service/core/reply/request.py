"""A SendMessage request: its checks, the thread and assistant it names, and
its idempotency record (AIP-155): the claim on its ``request_id``, the
replay of a repeat, and the release of the claim when the first attempt
fails before it stored anything."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import TypeAlias

from service.core import ids
from service.core.clock import now
from service.core.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from service.core.generation import GenerationSettings, check_generation
from service.core.limits import MAX_INSTRUCTIONS, MAX_MODEL, MAX_REQUEST_ID, MAX_USER_ID
from service.core.models import (
    Assistant,
    Completed,
    Delta,
    MemoryMode,
    Message,
    MessageStatus,
    OnBusy,
    ReplyEvent,
    Started,
    Thread,
    ToolCallsRequired,
    ToolSpec,
)
from service.core.ports import RequestRecord
from service.core.reply.build import before_end, started
from service.core.reply.collaborators import ReplyPolicy, ReplyStores
from service.core.reply.generate import Replier, RunSpec
from service.core.reply.recovery import Recovery
from service.core.tools import check_tool_choice, check_tools
from service.core.validation import check_metadata, check_text

__all__ = [
    "Idempotency",
    "SendRequest",
    "assistant_for",
    "check_request",
    "existing_thread",
    "resolve",
    "run_for",
    "thread_assistant",
]


Events: TypeAlias = AsyncGenerator[ReplyEvent, None]

# A repeat of a request still running polls for its result this often.
_POLL_FIRST = 0.05
_POLL_MAX = 0.5
# The longest a repeat waits for the first attempt (seconds); the caller's
# deadline usually ends the wait sooner.
_REPEAT_WAIT = 300.0


@dataclass(slots=True)
class SendRequest:
    """What the caller sent with SendMessage."""

    content: str
    thread_id: str = ""
    assistant_id: str = ""
    user_id: str = ""
    memory: MemoryMode = MemoryMode.UNSPECIFIED
    model: str = ""
    request_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    tools: list[ToolSpec] | None = None  # None: the assistant's
    tool_choice: str = ""
    generation: GenerationSettings | None = None  # None: the assistant's
    # Added to the assistant's instructions for this reply only (the HTTP
    # door's per-response ``instructions``).
    instructions: str = ""
    on_busy: OnBusy = OnBusy.REJECT  # when another reply holds the thread

    def fingerprint(self) -> str:
        """A digest of everything but the request id, to spot a reused id."""
        body = asdict(self)
        body.pop("request_id")
        body.pop("on_busy")  # how to wait is not what was asked
        if body["generation"] is None:  # as digested before requests had settings
            body.pop("generation")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def check_request(req: SendRequest, max_content: int) -> None:
    """Check the request's fields on their own (empty content on a thread
    asks to answer its last message again; that is checked under its lease).

    Raises:
        InvalidArgument: a malformed, missing or oversized field.
    """
    if req.content or not req.thread_id:
        check_text(req.content, "content", max_content, required=True)
    if req.thread_id:
        ids.check_id(ids.THREAD, req.thread_id, "thread_id")
    if req.assistant_id:
        ids.check_id(ids.ASSISTANT, req.assistant_id, "assistant_id")
    check_text(req.user_id, "user_id", MAX_USER_ID)
    check_text(req.model, "model", MAX_MODEL)
    check_text(req.request_id, "request_id", MAX_REQUEST_ID)
    check_text(req.instructions, "instructions", MAX_INSTRUCTIONS)
    check_metadata(req.metadata)
    if req.tools is not None:
        check_tools(req.tools, "tools")
    if req.generation is not None:
        check_generation(req.generation, "generation.")


async def resolve(
    stores: ReplyStores, tenant: str, req: SendRequest
) -> tuple[Thread, bool, Assistant, RunSpec]:
    """The thread the request continues, or a new one under the assistant it
    names (the tenant's default if none); whether it is new; its assistant;
    and the run that answers the request (checked before any thread is
    created, so a bad request leaves nothing behind).

    Raises:
        NotFound: no such thread or assistant.
        InvalidArgument: the thread belongs to another assistant or user, or
            ``tool_choice`` names no tool on offer.
    """
    if not req.thread_id:
        assistant = await assistant_for(stores, tenant, req.assistant_id)
        run = run_for(req, assistant)
        thread = await stores.threads.create(tenant, assistant.assistant_id, req.user_id, {})
        return thread, True, assistant, run
    thread, assistant = await existing_thread(
        stores, tenant, req.thread_id, req.assistant_id, req.user_id
    )
    return thread, False, assistant, run_for(req, assistant)


async def assistant_for(stores: ReplyStores, tenant: str, assistant_id: str) -> Assistant:
    """The assistant a new thread goes under: the one named, or the tenant's
    default.

    Raises:
        InvalidArgument: malformed id.
        NotFound: no such assistant.
    """
    if assistant_id:
        return await stores.assistants.get(tenant, assistant_id)
    return await stores.assistants.default(tenant)


async def existing_thread(
    stores: ReplyStores, tenant: str, thread_id: str, assistant_id: str, user_id: str
) -> tuple[Thread, Assistant]:
    """The thread a request continues and its assistant (see
    ``thread_assistant``).

    Raises:
        NotFound: no such thread (or its assistant is being deleted).
        InvalidArgument: the thread belongs to another assistant or user.
    """
    thread = await stores.threads.get(tenant, thread_id)
    return thread, await thread_assistant(stores, tenant, thread, assistant_id, user_id)


async def thread_assistant(
    stores: ReplyStores, tenant: str, thread: Thread, assistant_id: str, user_id: str
) -> Assistant:
    """The assistant of a thread a request continues; ``assistant_id`` and
    ``user_id``, if the request gave them, must be the thread's own.

    Raises:
        NotFound: the thread's assistant is being deleted (and the thread with it).
        InvalidArgument: the thread belongs to another assistant or user.
    """
    if assistant_id and assistant_id != thread.assistant_id:
        raise InvalidArgument(
            f"thread {thread.thread_id!r} belongs to assistant {thread.assistant_id!r}, not "
            f"{assistant_id!r}; omit assistant_id when continuing a thread",
            field="assistant_id",
        )
    if user_id and user_id != thread.user_id:
        raise InvalidArgument(
            f"thread {thread.thread_id!r} belongs to another user: a thread keeps the user it "
            "was created for, so start a new thread for this user",
            field="user_id",
        )
    try:
        return await stores.assistants.get(tenant, thread.assistant_id)
    except NotFound:  # the assistant is being deleted, and the thread with it
        raise NotFound("thread", thread.thread_id) from None


def run_for(req: SendRequest, assistant: Assistant) -> RunSpec:
    """A new run for the request: its own tools if it sent some, else the
    assistant's; its generation settings over the assistant's.

    Raises:
        InvalidArgument: ``tool_choice`` names no tool on offer.
    """
    tools = assistant.tools if req.tools is None else req.tools
    return RunSpec(
        run_id=ids.new_id(ids.RUN),
        round=1,
        tools=tools,
        own_tools=None if req.tools is None else tuple(req.tools),
        tool_choice=check_tool_choice(req.tool_choice, tools),
        request_id=req.request_id,
        generation=(req.generation or GenerationSettings()).over(assistant.generation),
        instructions=req.instructions,
    )


class Idempotency:
    """SendMessage's request ids: a repeat of a request returns the first
    result and never calls the model for it twice."""

    def __init__(
        self, stores: ReplyStores, policy: ReplyPolicy, recovery: Recovery, replier: Replier
    ) -> None:
        self._stores = stores
        self._requests = stores.requests
        self._lease_ttl = policy.lease_ttl
        self._recovery = recovery
        self._replier = replier

    async def serve(self, tenant: str, req: SendRequest, fresh: Callable[[], Events]) -> Events:
        """The events of ``req``: ``fresh()``'s when its id is new (or its
        first claimant died before storing anything), else a replay of the
        first attempt.

        Raises:
            InvalidArgument: the id was used for a different request.
            Aborted: the first attempt is still running after a long wait.
            FailedPrecondition: the first attempt failed and the thread has
                moved on since.
        """
        if not req.request_id:
            events = fresh()
        else:
            record = await self._requests.claim(tenant, req.request_id, req.fingerprint(), now())
            if record is None:
                events = self._released_on_failure(tenant, req, fresh())
            else:
                events = self._repeat(tenant, req, record, fresh)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event

    async def bind(self, tenant: str, req: SendRequest, first: Started, when: datetime) -> None:
        """Record where the first attempt at ``req`` stored its messages
        (``first``), so that repeats replay it."""
        if not req.request_id:
            return
        await self._requests.bind(
            tenant,
            req.request_id,
            RequestRecord(
                fingerprint=req.fingerprint(),
                create_time=when,
                thread_id=first.thread_id,
                thread_created=first.thread_created,
                assistant_id=first.assistant_id,
                user_message_id=first.user_message_id,
                assistant_message_id=first.assistant_message_id,
                model=first.model,
            ),
        )

    async def _released_on_failure(self, tenant: str, req: SendRequest, events: Events) -> Events:
        """A fresh run under a claimed request id: if it fails before any
        message is stored, the claim is dropped so the caller can retry."""
        bound = False
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    bound = True
                    yield event
        finally:
            if not bound:
                await self._stores.shield.run(self._requests.release(tenant, req.request_id))

    async def _repeat(
        self, tenant: str, req: SendRequest, record: RequestRecord, fresh: Callable[[], Events]
    ) -> Events:
        """Serve a request id seen before: replay its result, waiting for it
        while the first attempt runs (on any replica), or finish what a dead
        attempt left, without ever calling the model for it twice."""
        if record.fingerprint != req.fingerprint():
            raise InvalidArgument(
                f"request_id {req.request_id!r} was already used for a different request; "
                "use a new request_id for a new message",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        events = await self._first_result(tenant, req, record, fresh)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event

    async def _first_result(
        self, tenant: str, req: SendRequest, record: RequestRecord, fresh: Callable[[], Events]
    ) -> Events:
        """The events that answer a repeat of ``record``'s request, once its
        first attempt has stored a result (polled, with capped back-off; the
        caller's deadline bounds the wait, and ``_REPEAT_WAIT`` too).

        Raises:
            Aborted: the first attempt still runs after ``_REPEAT_WAIT``.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + _REPEAT_WAIT
        delay = _POLL_FIRST
        while True:
            if not record.assistant_message_id:
                stale = record.create_time < now() - timedelta(seconds=2 * self._lease_ttl)
                if stale and await self._may_be_queued(req):
                    stale = False
                if stale and await self._requests.take_over(
                    tenant, req.request_id, record.create_time, now()
                ):
                    return self._released_on_failure(tenant, req, fresh())
            elif (reply := await self._last_reply(tenant, record)) is not None:
                first = reply.message_id == record.assistant_message_id
                if first and reply.status is MessageStatus.FAILED and not reply.content:
                    # The model was never heard from: run it now, in the same slot.
                    return self._retry_failed(tenant, req, record, reply)
                return self._replay(tenant, record, reply)
            if loop.time() + delay > give_up:
                raise Aborted(
                    f"a request with request_id {req.request_id!r} is still being processed; "
                    "retry shortly",
                    reason="REQUEST_IN_PROGRESS",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)
            again = await self._requests.claim(tenant, req.request_id, req.fingerprint(), now())
            if again is None:  # the first attempt stored nothing and let the id go
                return self._released_on_failure(tenant, req, fresh())
            record = again

    async def _may_be_queued(self, req: SendRequest) -> bool:
        """Whether the first attempt at ``req``, which has stored nothing for
        long, may still be alive: sent to wait for its thread (on_busy), it
        may be queued, or hold the lease and be about to store. Its ticket
        or its lease lapses if it died."""
        if req.on_busy is OnBusy.REJECT or not req.thread_id:
            return False
        leases = self._stores.leases
        return await leases.waiting(req.thread_id) or not await leases.expired(req.thread_id)

    async def _last_reply(self, tenant: str, record: RequestRecord) -> Message | None:
        """What the first attempt finally produced: the last reply of its
        run (the first round's, or a later one after tool outputs were
        submitted), settled if its writer died; None while it is still
        streaming.

        Raises:
            NotFound: the thread is gone.
        """
        messages = self._stores.messages
        reply = await messages.get(tenant, record.assistant_message_id)
        if reply is None:
            raise NotFound("thread", record.thread_id)
        if reply.run_id:
            reply = await messages.last_reply(tenant, record.thread_id, reply.run_id) or reply
        if reply.status is not MessageStatus.IN_PROGRESS:
            return reply
        if not await self._stores.leases.expired(record.thread_id):
            return None
        # Its writer died: taking its lease over settles the reply INCOMPLETE.
        async with self._recovery.hold(tenant, record.thread_id):
            pass
        return await messages.get(tenant, reply.message_id) or reply

    async def _replay(self, tenant: str, record: RequestRecord, reply: Message) -> Events:
        """The events of a finished first attempt, replayed from what it
        stored: its run's last reply, and the tool calls that run still
        waits for, if it does."""
        waiting = None
        if reply.status is MessageStatus.REQUIRES_ACTION:
            waiting = (await self._stores.threads.get(tenant, record.thread_id)).run
        yield _started(record, reply)
        if reply.content:
            yield Delta(reply.content)
        if waiting is not None and waiting.message_id == reply.message_id:
            yield ToolCallsRequired(
                waiting.run_id, reply.message_id, list(reply.tool_calls), waiting.expire_time
            )
        else:
            yield Completed(reply)

    async def _retry_failed(
        self, tenant: str, req: SendRequest, record: RequestRecord, reply: Message
    ) -> Events:
        """Run the model again for a first attempt that failed before the
        model sent anything, if the thread has not moved on since, with the
        request's tools and settings (a repeat is the same request).

        Raises:
            FailedPrecondition: the thread has moved on.
            NotFound: the thread or its assistant is gone.
        """
        end: list[ReplyEvent] = []
        async with self._recovery.hold(tenant, record.thread_id) as writes:
            user = await self._stores.messages.get(tenant, record.user_message_id)
            if (
                user is None
                or writes.thread.message_count != reply.sequence + 1
                or not await writes.restart(tenant, reply.message_id, reply.model)
            ):
                raise FailedPrecondition(
                    "the first attempt with this request_id failed and the thread has moved on "
                    "since; send the message again with a new request_id",
                    reason="REQUEST_FAILED",
                )
            try:
                assistant = await self._stores.assistants.get(tenant, record.assistant_id)
            except NotFound:
                raise NotFound("thread", record.thread_id) from None
            run = replace(run_for(req, assistant), run_id=reply.run_id or ids.new_id(ids.RUN))
            yield _started(record, reply)
            events = self._replier.generate(tenant, assistant, writes, user, reply, run)
            async with contextlib.aclosing(before_end(events, end)) as stream:
                async for event in stream:
                    yield event
        for event in end:  # the thread is free again
            yield event


def _started(record: RequestRecord, reply: Message) -> Started:
    return started(
        thread_id=record.thread_id,
        thread_created=record.thread_created,
        assistant_id=record.assistant_id,
        user_message_id=record.user_message_id,
        reply=reply,
    )
