"""SendMessage, SubmitToolOutputs and CancelRun: the reply loop in order, its
parts in ``service.core.reply``; and what else must wait for a thread's
reply to end: AddMessages and UpdateThread.

SendMessage, step by step:

1. check the request and, with a ``request_id``, claim it (a repeat replays
   the first result instead of calling the model again);
2. find or create the thread, take its lease (one reply per thread), settle
   a reply its last holder left unfinished, and refuse while a run waits for
   tool outputs;
3. store the user message and an IN_PROGRESS assistant message, each at the
   next sequence number, and emit ``Started`` (with empty content, only the
   assistant message: it answers the thread's last message, the user's);
4. build the prompt (instructions, memories, summary, history, the new
   message) and stream the model's reply as ``Delta`` events, saving
   progress now and then;
5. store the reply as COMPLETE (or INCOMPLETE when the model hit its length
   limit) with usage, release the thread, and emit ``Completed``; or, when
   the model asked for tools, leave the run waiting for their outputs and
   emit ``ToolCallsRequired``.

If the model fails, the reply is stored FAILED with what arrived and the
error propagates; if the caller goes away, it is stored INCOMPLETE with
what arrived and the model request is closed; ``reply/generate.py`` says
what happens when the lease is lost, the database stops answering or the
server shuts down (``interrupt``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import replace

from service.core.batches import BatchRequest
from service.core.clock import now
from service.core.errors import FailedPrecondition, InvalidArgument, ShuttingDown
from service.core.limits import MAX_INSTRUCTIONS
from service.core.models import MemoryMode, Message, MessageStatus, ReplyEvent, Role, Thread
from service.core.ports import MessageStore
from service.core.reply.build import RunMessages, before_end, started
from service.core.reply.collaborators import ReplyPolicy, ReplyServices, ReplyStores
from service.core.reply.generate import Replier
from service.core.reply.imports import Added, Importer
from service.core.reply.late import LateWrites
from service.core.reply.recovery import Recovery
from service.core.reply.request import Idempotency, SendRequest, check_request, resolve
from service.core.reply.runs import ToolRuns
from service.core.reply.writes import ThreadWrites
from service.core.threads import ThreadDraft
from service.core.validation import check_text

__all__ = [
    "Added",
    "BatchRequest",
    "Conversation",
    "ReplyPolicy",
    "ReplyServices",
    "ReplyStores",
    "SendRequest",
]


log = logging.getLogger(__name__)


class Conversation:
    """The reply use cases the ThreadService calls; it counts the replies in
    flight so that shutdown can wait for them (``drain``)."""

    def __init__(
        self, *, stores: ReplyStores, services: ReplyServices, policy: ReplyPolicy
    ) -> None:
        self._stores = stores
        self._llm = services.llm
        self._policy = policy
        late = LateWrites(stores.leases, stores.shield)
        self._leases = stores.leases
        self._recovery = Recovery(stores, services, policy, late)
        self._replier = Replier(services, policy, stores.shield, late)
        self._requests = Idempotency(stores, policy, self._recovery, self._replier)
        self._runs = ToolRuns(stores, self._recovery, self._replier)
        self._importer = Importer(stores, services, policy, self._recovery, self._runs)
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def send(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Run one SendMessage and yield its events.

        Raises:
            InvalidArgument: malformed or oversized input, mismatched ids.
            NotFound: unknown thread or assistant.
            ThreadBusy: another reply is streaming on the thread (on_busy REJECT).
            ThreadQueueFull: too many messages wait for the thread (ENQUEUE,
                INTERRUPT).
            ReplyInterrupted: a newer message stopped this reply.
            Aborted: the same request_id is still being served.
            FailedPrecondition: no model endpoint is configured, or it
                rejected the request.
            Unavailable, ResourceExhausted: the model endpoint failed.
        """
        async with contextlib.aclosing(self._tracked(self._send(tenant, req))) as events:
            async for event in events:
                yield event

    async def submit(
        self,
        tenant: str,
        thread_id: str,
        run_id: str,
        outputs: list[tuple[str, str]],
        instructions: str = "",
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Answer a run's pending tool calls and continue its reply (see
        ``ToolRuns.submit`` for the errors).

        Raises:
            InvalidArgument: ``instructions`` too long (and see ``ToolRuns.submit``).
        """
        check_text(instructions, "instructions", MAX_INSTRUCTIONS)
        submitted = self._runs.submit(tenant, thread_id, run_id, outputs, instructions)
        events = self._tracked(submitted)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event

    async def cancel(self, tenant: str, thread_id: str, run_id: str) -> Message:
        """Cancel a run that waits for tool outputs; return its message (see
        ``ToolRuns.cancel`` for the errors)."""
        return await self._runs.cancel(tenant, thread_id, run_id)

    async def add_messages(self, tenant: str, req: BatchRequest) -> Added:
        """Append a batch of messages without a reply (see ``Importer.add``
        for the errors)."""
        return await self._importer.add(tenant, req)

    async def update_thread(
        self, tenant: str, thread_id: str, draft: ThreadDraft, paths: list[str]
    ) -> Thread:
        """Change a thread's fields (AIP-134) under its lease: a thread has one
        writer at a time, and no reply may run with the assistant it is
        being moved from.

        Raises:
            InvalidArgument: malformed ids, a bad mask or value.
            NotFound: no such thread or assistant.
            ThreadBusy: a reply runs on the thread, or (to move it to another
                assistant) a run waits for tool outputs.
        """
        threads = self._stores.threads
        changes = await threads.check_update(tenant, thread_id, draft, paths)
        async with self._recovery.hold(tenant, thread_id) as writes:
            if "assistant_id" in changes:
                await self._runs.refuse_if_waiting(tenant, writes)
            updated = await threads.apply_update(tenant, thread_id, changes)
        return (await threads.with_totals([updated]))[0]

    def interrupt(self) -> int:
        """Cut the replies in flight short for a shutdown: each stores what
        it has INCOMPLETE and ends with ``ShuttingDown``; return how many."""
        return self._leases.interrupt(ShuttingDown())

    async def sweep(self, period: float) -> None:
        """Every ``period`` seconds, settle the replies whose holder died on
        threads nobody has taken since (``Recovery.sweep``), so that none is
        left IN_PROGRESS; runs until cancelled."""
        while True:
            await asyncio.sleep(period)
            try:
                if settled := await self._recovery.sweep():
                    log.info("settled the replies of %d threads whose holder died", settled)
            except Exception:  # the database is away: the next sweep tries again
                log.warning("the sweep of unfinished replies failed", exc_info=True)

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a deadline
        """Wait until no reply is running (cancelled ones store their final
        state first); False if ``timeout`` seconds pass before that."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _tracked(
        self, events: AsyncGenerator[ReplyEvent, None]
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Count ``events`` as a reply in flight until it ends, for ``drain``."""
        self._active += 1
        self._idle.clear()
        try:
            async with contextlib.aclosing(events) as stream:
                async for event in stream:
                    yield event
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def _send(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Step 1, then the rest for a request that is not a repeat."""
        check_request(req, self._policy.max_content)
        if not self._llm.configured:
            raise FailedPrecondition(
                "no model endpoint is configured: set LOOM_LLM_BASE_URL (and LOOM_LLM_API_KEY "
                "if the endpoint needs one), or OPENAI_API_KEY for OpenAI, and restart Loom",
                reason="MODEL_NOT_CONFIGURED",
            )
        events = self._requests.serve(tenant, req, lambda: self._fresh(tenant, req))
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event

    async def _fresh(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Steps 2 to 5; a thread created for the request is deleted again
        if nothing was stored in it."""
        thread, created, assistant, run = await resolve(self._stores, tenant, req)
        model = req.model.strip() or assistant.model or self._policy.default_model
        memory = req.memory if req.memory is not MemoryMode.UNSPECIFIED else assistant.memory_mode
        stored = False
        end: list[ReplyEvent] = []
        try:
            # 2. The thread is read again as claimed under the lease: a reply
            # that ended since it was first read must be in this one's context.
            async with self._recovery.hold(tenant, thread.thread_id, on_busy=req.on_busy) as writes:
                await self._runs.refuse_if_waiting(tenant, writes)
                t = now()  # 3.
                new = RunMessages(tenant, thread.thread_id, run.run_id, memory, t)
                user, reply = await self._store_turn(tenant, req, writes, new, model)
                stored = True
                first = started(
                    thread_id=thread.thread_id,
                    thread_created=created,
                    assistant_id=assistant.assistant_id,
                    user_message_id=user.message_id,
                    reply=reply,
                )
                await self._requests.bind(tenant, req, first, t)
                yield first
                # 4. and 5.
                events = self._replier.generate(tenant, assistant, writes, user, reply, run)
                async with contextlib.aclosing(before_end(events, end)) as stream:
                    async for event in stream:
                        yield event
        finally:
            if created and not stored:
                # Nothing reached the thread: do not leave an empty one behind.
                await self._stores.shield.run(
                    self._stores.thread_store.delete(tenant, thread.thread_id)
                )
        for event in end:  # the thread is free again
            yield event

    async def _store_turn(
        self, tenant: str, req: SendRequest, writes: ThreadWrites, new: RunMessages, model: str
    ) -> tuple[Message, Message]:
        """Store the user's message and an empty reply for ``model``; with
        empty content, only the reply, answering the thread's last message.

        Raises:
            InvalidArgument: empty content, and the thread's last message is
                not the user's.
        """
        if not req.content:
            user = await _last_user_message(self._stores.messages, tenant, writes.thread)
            (reply,) = await writes.append([new.reply(model, req.request_id)])
            return replace(user, memory=new.memory), reply
        user, reply = await writes.append(
            [new.user(req.content, req.metadata, req.request_id), new.reply(model, req.request_id)]
        )
        # The thread's context and count are written once, when the reply
        # ends; a holder that dies before that is settled by the next one
        # (see reply/recovery.py).
        await writes.cache([user.entry()])
        return user, reply


async def _last_user_message(messages: MessageStore, tenant: str, thread: Thread) -> Message:
    """The thread's last message, which must be a whole user message (the
    one a SendMessage with empty content answers again).

    Raises:
        InvalidArgument: the thread is empty or its last message is not the user's.
    """
    last = await messages.find_page(tenant, thread.thread_id, 1, None, True)
    if (
        not last
        or last[0].sequence != thread.message_count - 1
        or last[0].role is not Role.USER
        or last[0].status is not MessageStatus.COMPLETE
    ):
        raise InvalidArgument(
            "content is required: empty content only answers again a thread whose last message "
            "is the user's (to regenerate a reply, ForkThread before it first)",
            field="content",
        )
    return last[0]
