"""SendMessage: store the user's message, stream the model's reply, store it.

The reply loop, in order:

1. validate the request and, with a ``request_id``, claim it (a repeat
   replays the first result instead of calling the model again);
2. find or create the thread, take its lease (one reply per thread);
3. store the user message and an IN_PROGRESS assistant message, each at the
   next sequence number, and emit ``Started``;
4. build the prompt (instructions, history, the new message) and stream the
   model's reply as ``Delta`` events, saving progress now and then;
5. store the reply as COMPLETE (or INCOMPLETE when the model hit its length
   limit) with usage, and emit ``Completed``.

If the model fails, the reply is stored FAILED with what arrived and the
error propagates; if the caller goes away (or the server shuts down), it is
stored INCOMPLETE with what arrived and the model request is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from service.core import ids
from service.core.assistants import Assistants
from service.core.budget import Fitted, fit, plan_budget, with_tokens
from service.core.clock import now
from service.core.context import merge
from service.core.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    LoomError,
    NotFound,
    ResourceExhausted,
    ThreadBusy,
)
from service.core.leases import Leases
from service.core.limits import MAX_MODEL, MAX_REQUEST_ID, MAX_USER_ID
from service.core.models import (
    Assistant,
    Completed,
    ContextEntry,
    ContextStrategy,
    Delta,
    MemoryMode,
    MemoryRecalled,
    Message,
    MessageStatus,
    PendingRun,
    Recalled,
    ReplyEvent,
    Role,
    Started,
    Thread,
    ToolCall,
    ToolCallsRequired,
    ToolSpec,
    Usage,
)
from service.core.ports import (
    ChatModel,
    MemoryPort,
    MessageStore,
    RequestRecord,
    RequestStore,
    ThreadStore,
    TokenCounter,
)
from service.core.shield import Shield
from service.core.summaries import Summarizer
from service.core.threads import Threads
from service.core.tools import check_outputs, check_tool_choice, check_tools
from service.core.validation import check_metadata, check_text
from service.telemetry import annotate

__all__ = ["Conversation", "RunSpec", "SendRequest"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Received:
    """What the model has sent so far for one reply."""

    parts: list[str] = field(default_factory=list)
    calls: tuple[ToolCall, ...] = ()
    usage: Usage | None = None
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One reply in the making, over one or more tool rounds."""

    run_id: str
    round: int
    tools: list[ToolSpec]
    own_tools: tuple[ToolSpec, ...] | None  # the message's own tool set, if it had one
    tool_choice: str
    request_id: str = ""


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

    def fingerprint(self) -> str:
        """A digest of everything but the request id, to spot a reused id."""
        body = asdict(self)
        body.pop("request_id")
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Conversation:
    """The SendMessage use case."""

    def __init__(
        self,
        *,
        assistants: Assistants,
        threads: Threads,
        thread_store: ThreadStore,
        messages: MessageStore,
        requests: RequestStore,
        leases: Leases,
        llm: ChatModel,
        default_model: str,
        max_content: int,
        lease_ttl: float,
        shield: Shield,
        context_chars: int = 400_000,
        flush_interval: float = 1.0,
        memory: MemoryPort | None = None,
        counter: TokenCounter,
        summarizer: Summarizer | None = None,
        max_tool_rounds: int = 8,
        run_expiry: float = 600.0,
    ) -> None:
        self._max_tool_rounds = max_tool_rounds
        self._run_expiry = run_expiry
        self._memory = memory
        self._counter = counter
        self._summarizer = summarizer
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._shield = shield
        self._context_chars = context_chars
        self._assistants = assistants
        self._threads = threads
        self._thread_store = thread_store
        self._messages = messages
        self._requests = requests
        self._leases = leases
        self._llm = llm
        self._default_model = default_model
        self._max_content = max_content
        self._lease_ttl = lease_ttl
        self._flush_interval = flush_interval

    async def send(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        """Run one SendMessage and yield its events.

        Raises:
            InvalidArgument: malformed or oversized input, mismatched ids.
            NotFound: unknown thread or assistant.
            ThreadBusy: another reply is streaming on the thread.
            Aborted: the same request_id is still being served.
            FailedPrecondition: no model endpoint is configured, or it
                rejected the request.
            Unavailable, ResourceExhausted: the model endpoint failed.
        """
        async for event in self._tracked(self._send(tenant, req)):
            yield event

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

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bound, not a deadline
        """Wait until no reply is running (cancelled ones store their final
        state first); False if ``timeout`` seconds pass before that."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def _send(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        self._validate(req)
        if not self._llm.configured:
            raise FailedPrecondition(
                "no model endpoint is configured: set LOOM_LLM_BASE_URL (and LOOM_LLM_API_KEY "
                "if the endpoint needs one), or OPENAI_API_KEY for OpenAI, and restart Loom",
                reason="MODEL_NOT_CONFIGURED",
            )
        if not req.request_id:
            async for event in self._fresh(tenant, req):
                yield event
            return
        existing = await self._requests.claim(tenant, req.request_id, req.fingerprint(), now())
        if existing is not None:
            async for event in self._repeat(tenant, req, existing):
                yield event
            return
        async for event in self._claimed(tenant, req):
            yield event

    def _validate(self, req: SendRequest) -> None:
        check_text(req.content, "content", self._max_content, required=True)
        if req.thread_id:
            ids.check_id(ids.THREAD, req.thread_id, "thread_id")
        if req.assistant_id:
            ids.check_id(ids.ASSISTANT, req.assistant_id, "assistant_id")
        check_text(req.user_id, "user_id", MAX_USER_ID)
        check_text(req.model, "model", MAX_MODEL)
        check_text(req.request_id, "request_id", MAX_REQUEST_ID)
        check_metadata(req.metadata)
        if req.tools is not None:
            check_tools(req.tools, "tools")

    async def _claimed(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        """A fresh run under a claimed request id: if it fails before any
        message is stored, the claim is dropped so the caller can retry."""
        bound = False
        try:
            async for event in self._fresh(tenant, req):
                bound = True
                yield event
        finally:
            if not bound:
                await self._shield.run(self._requests.release(tenant, req.request_id))

    async def _resolve(self, tenant: str, req: SendRequest) -> tuple[Thread, bool, Assistant]:
        if not req.thread_id:
            assistant = (
                await self._assistants.get(tenant, req.assistant_id)
                if req.assistant_id
                else await self._assistants.default(tenant)
            )
            thread = await self._threads.create(tenant, assistant.assistant_id, req.user_id, {})
            return thread, True, assistant
        thread = await self._threads.get(tenant, req.thread_id)
        if req.assistant_id and req.assistant_id != thread.assistant_id:
            raise InvalidArgument(
                f"thread {thread.thread_id!r} belongs to assistant {thread.assistant_id!r}, not "
                f"{req.assistant_id!r}; omit assistant_id when continuing a thread",
                field="assistant_id",
            )
        if req.user_id and req.user_id != thread.user_id:
            raise InvalidArgument(
                f"thread {thread.thread_id!r} belongs to another user; omit user_id when "
                "continuing a thread, or start a new thread for this user",
                field="user_id",
            )
        try:
            assistant = await self._assistants.get(tenant, thread.assistant_id)
        except NotFound:  # the assistant is being deleted, and the thread with it
            raise NotFound("thread", thread.thread_id) from None
        return thread, False, assistant

    async def _fresh(self, tenant: str, req: SendRequest) -> AsyncGenerator[ReplyEvent, None]:
        thread, created, assistant = await self._resolve(tenant, req)
        model = req.model.strip() or assistant.model or self._default_model
        memory = req.memory if req.memory is not MemoryMode.UNSPECIFIED else assistant.memory_mode
        tools = assistant.tools if req.tools is None else req.tools
        run = RunSpec(
            run_id=ids.new_id(ids.RUN),
            round=1,
            tools=tools,
            own_tools=None if req.tools is None else tuple(req.tools),
            tool_choice=check_tool_choice(req.tool_choice, tools),
            request_id=req.request_id,
        )
        stored = False
        try:
            async with self._leases.hold(tenant, thread.thread_id) as lease:
                if lease.stale is not None:
                    thread = await self._settle(tenant, thread)
                thread = await self._pending(tenant, thread)
                t = now()
                user, reply = await self._messages.append_all(
                    [
                        Message(
                            message_id=ids.new_id(ids.MESSAGE),
                            tenant=tenant,
                            thread_id=thread.thread_id,
                            role=Role.USER,
                            content=req.content,
                            status=MessageStatus.COMPLETE,
                            metadata=dict(req.metadata),
                            memory=memory,
                            create_time=t,
                            request_id=req.request_id,
                            run_id=run.run_id,
                        ),
                        Message(
                            message_id=ids.new_id(ids.MESSAGE),
                            tenant=tenant,
                            thread_id=thread.thread_id,
                            role=Role.ASSISTANT,
                            content="",
                            status=MessageStatus.IN_PROGRESS,
                            model=model,
                            memory=memory,
                            create_time=t,
                            request_id=req.request_id,
                            run_id=run.run_id,
                        ),
                    ],
                    thread.message_count,
                )
                stored = True
                # The thread's context and count are written once, when the
                # reply ends; a holder that dies before that is settled by
                # the next one (see _settle).
                thread.message_count = reply.sequence + 1
                thread.context = merge(
                    thread.context,
                    [await with_tokens(user.entry(), self._counter)],
                    self._context_chars,
                )
                if req.request_id:
                    await self._requests.bind(
                        tenant,
                        req.request_id,
                        RequestRecord(
                            fingerprint=req.fingerprint(),
                            create_time=t,
                            thread_id=thread.thread_id,
                            thread_created=created,
                            assistant_id=assistant.assistant_id,
                            user_message_id=user.message_id,
                            assistant_message_id=reply.message_id,
                            model=model,
                        ),
                    )
                yield Started(
                    thread_id=thread.thread_id,
                    thread_created=created,
                    user_message_id=user.message_id,
                    assistant_message_id=reply.message_id,
                    model=model,
                    assistant_id=assistant.assistant_id,
                )
                async for event in self._generate(tenant, assistant, thread, user, reply, run):
                    yield event
        finally:
            if created and not stored:
                # Nothing reached the thread: do not leave an empty one behind.
                await self._shield.run(self._thread_store.delete(tenant, thread.thread_id))

    async def _pending(self, tenant: str, thread: Thread) -> Thread:
        """Under the thread's lease: expire its pending run if its time is
        up, else refuse while one waits for tool outputs.

        Raises:
            ThreadBusy: a run waits for tool outputs.
        """
        run = thread.run
        if run is None:
            return thread
        if run.expire_time > now():
            raise ThreadBusy(
                thread.thread_id,
                waiting=f"run {run.run_id!r} waits for tool outputs: submit them with "
                "SubmitToolOutputs or cancel the run with CancelRun",
            )
        await self._close_run(tenant, thread, run, MessageStatus.EXPIRED)
        return thread

    async def _close_run(
        self, tenant: str, thread: Thread, run: PendingRun, status: MessageStatus
    ) -> Message:
        """End a waiting run: its message takes ``status``; the thread is free."""
        waiting = await self._messages.get(tenant, run.message_id)
        if waiting is None:
            raise NotFound("run", run.run_id)
        closed = await self._messages.finish(
            waiting.message_id,
            content=waiting.content,
            status=status,
            usage=waiting.usage,
            error=status.value,
            tool_calls=waiting.tool_calls,
        )
        thread.run = None
        await self._save_context(thread, [(closed or waiting).entry()])
        return closed or waiting

    async def submit(
        self, tenant: str, thread_id: str, run_id: str, outputs: list[tuple[str, str]]
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Answer a run's pending tool calls and continue its reply.

        Raises:
            InvalidArgument: malformed ids; missing, unknown or duplicate
                outputs.
            NotFound: no such thread, or no such run waiting on it.
            FailedPrecondition: the run expired.
            ThreadBusy: a reply is streaming on the thread.
        """
        async for event in self._tracked(self._submit(tenant, thread_id, run_id, outputs)):
            yield event

    async def _submit(
        self, tenant: str, thread_id: str, run_id: str, outputs: list[tuple[str, str]]
    ) -> AsyncGenerator[ReplyEvent, None]:
        ids.check_id(ids.RUN, run_id, "run_id")
        thread = await self._threads.get(tenant, thread_id)
        async with self._leases.hold(tenant, thread_id) as lease:
            thread = await self._threads.get(tenant, thread_id)
            if lease.stale is not None:
                thread = await self._settle(tenant, thread)
            pending = thread.run
            if pending is None or pending.run_id != run_id:
                raise NotFound("run", run_id)
            if pending.expire_time <= now():
                await self._close_run(tenant, thread, pending, MessageStatus.EXPIRED)
                raise FailedPrecondition(
                    f"run {run_id!r} expired at {pending.expire_time:%Y-%m-%dT%H:%M:%SZ} before "
                    "its tool outputs came; send the message again",
                    reason="RUN_EXPIRED",
                )
            answers = check_outputs(pending.tool_call_ids, outputs)
            assistant = await self._assistants.get(tenant, thread.assistant_id)
            user = await self._messages.get(tenant, pending.user_message_id)
            waiting = await self._messages.get(tenant, pending.message_id)
            if user is None or waiting is None:
                raise NotFound("run", run_id)
            t = now()
            base = {"tenant": tenant, "thread_id": thread_id, "create_time": t}
            stored = await self._messages.append_all(
                [
                    *(
                        Message(
                            message_id=ids.new_id(ids.MESSAGE),
                            role=Role.TOOL,
                            content=answers[call_id],
                            status=MessageStatus.COMPLETE,
                            memory=user.memory,
                            tool_call_id=call_id,
                            run_id=run_id,
                            **base,  # type: ignore[arg-type]
                        )
                        for call_id in pending.tool_call_ids
                    ),
                    Message(
                        message_id=ids.new_id(ids.MESSAGE),
                        role=Role.ASSISTANT,
                        content="",
                        status=MessageStatus.IN_PROGRESS,
                        model=pending.model,
                        memory=user.memory,
                        run_id=run_id,
                        **base,  # type: ignore[arg-type]
                    ),
                ],
                thread.message_count,
            )
            *tool_messages, reply = stored
            answered = await self._messages.finish(
                waiting.message_id,
                content=waiting.content,
                status=MessageStatus.COMPLETE,
                usage=waiting.usage,
                tool_calls=waiting.tool_calls,
            )
            thread.run = None
            thread.message_count = reply.sequence + 1
            await self._save_context(
                thread, [(answered or waiting).entry(), *(m.entry() for m in tool_messages)]
            )
            tools = assistant.tools if pending.tools is None else list(pending.tools)
            run = RunSpec(
                run_id=run_id,
                round=pending.round + 1,
                tools=tools,
                own_tools=pending.tools,
                tool_choice=pending.tool_choice,
                request_id=pending.request_id,
            )
            yield Started(
                thread_id=thread_id,
                thread_created=False,
                user_message_id=user.message_id,
                assistant_message_id=reply.message_id,
                model=reply.model,
                assistant_id=assistant.assistant_id,
            )
            async for event in self._generate(tenant, assistant, thread, user, reply, run):
                yield event

    async def cancel(self, tenant: str, thread_id: str, run_id: str) -> Message:
        """Cancel a run that waits for tool outputs; return its message.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such thread, or no such run waiting on it.
            ThreadBusy: a reply is streaming on the thread.
        """
        ids.check_id(ids.RUN, run_id, "run_id")
        await self._threads.get(tenant, thread_id)
        async with self._leases.hold(tenant, thread_id):
            thread = await self._threads.get(tenant, thread_id)
            if thread.run is None or thread.run.run_id != run_id:
                raise NotFound("run", run_id)
            return await self._close_run(tenant, thread, thread.run, MessageStatus.CANCELLED)

    async def _save_context(self, thread: Thread, entries: list[ContextEntry]) -> None:
        counted = [await with_tokens(e, self._counter) for e in entries]
        thread.context = merge(thread.context, counted, self._context_chars)
        await self._thread_store.save_context(
            thread.thread_id, thread.context, thread.message_count, now(), thread.run
        )

    async def _settle(self, tenant: str, thread: Thread) -> Thread:
        """After taking over a dead holder's lease: mark its unfinished reply
        INCOMPLETE and rebuild the thread's context and count from the
        messages themselves (the holder may have died between writes)."""
        history = await self._messages.history(tenant, thread.thread_id, 2**62)
        entries: list[ContextEntry] = []
        for message in history:
            settled = message
            if message.status is MessageStatus.IN_PROGRESS:
                settled = (
                    await self._messages.finish(
                        message.message_id,
                        content=message.content,
                        status=MessageStatus.INCOMPLETE,
                        error="interrupted",
                    )
                    or message
                )
            entries.append(settled.entry())
        thread.message_count = history[-1].sequence + 1 if history else 0
        thread.context = []
        await self._save_context(thread, entries)
        return thread

    async def _fit(
        self,
        assistant: Assistant,
        thread: Thread,
        user: Message,
        reply: Message,
        recalled: list[Recalled],
    ) -> Fitted:
        """The reply's prompt, within the window of the model that answers."""
        window = self._counter.context_window(reply.model, assistant.context_window)
        summarize = assistant.context_strategy is ContextStrategy.SUMMARIZE
        fitted = await fit(
            instructions=assistant.instructions,
            memories=recalled,
            summary=thread.summary if summarize else None,
            history=thread.context,
            new=user.entry(),
            budget=plan_budget(window),
            ratio=self._counter.ratio(reply.model),
            counter=self._counter,
        )
        if fitted.dropped:
            annotate(
                prompt_dropped_messages=fitted.dropped,
                prompt_summary_ready=thread.summary is not None,
            )
            log.info(
                "prompt for %s left out the %d oldest messages of %s to fit %d tokens",
                reply.message_id,
                fitted.dropped,
                thread.thread_id,
                window,
            )
        return fitted

    async def _remembered(self, remembering: asyncio.Future[None] | None, user: Message) -> None:
        if remembering is None:
            return
        try:
            await remembering
        except Exception:
            log.warning(
                "episodic memory write failed for %s; the extraction job retries it",
                user.message_id,
                exc_info=True,
            )

    async def _await_tools(
        self,
        run: RunSpec,
        user: Message,
        reply: Message,
        calls: tuple[ToolCall, ...],
        finish: Callable[..., Awaitable[Message]],
    ) -> ToolCallsRequired:
        """End a round in which the model asked for tools: the run waits for
        their outputs (durably, on the thread) unless it is past the cap.

        Raises:
            ResourceExhausted: the model asked for tools too many times.
        """
        if run.round >= self._max_tool_rounds:
            await finish(MessageStatus.INCOMPLETE, "tool round limit reached")
            raise ResourceExhausted(
                f"the model asked for tools {run.round} times in one reply, the limit "
                f"(LOOM_MAX_TOOL_ROUNDS={self._max_tool_rounds}); the run was stopped and the "
                "thread is free",
                reason="TOOL_ROUNDS_EXCEEDED",
            )
        expire = now() + timedelta(seconds=self._run_expiry)
        pending = PendingRun(
            run_id=run.run_id,
            message_id=reply.message_id,
            user_message_id=user.message_id,
            tool_call_ids=tuple(c.tool_call_id for c in calls),
            round=run.round,
            model=reply.model,
            expire_time=expire,
            tools=run.own_tools,
            tool_choice=run.tool_choice,
            request_id=run.request_id,
        )
        await finish(MessageStatus.REQUIRES_ACTION, pending=pending)
        return ToolCallsRequired(run.run_id, reply.message_id, list(calls), expire)

    async def _maybe_fold(
        self, tenant: str, assistant: Assistant, thread: Thread, model: str, limit: int
    ) -> None:
        if (
            self._summarizer is None
            or assistant.context_strategy is not ContextStrategy.SUMMARIZE
            or not self._summarizer.needs_fold(thread, limit)
        ):
            return
        try:
            await self._summarizer.schedule(tenant, thread, model, limit)
        except Exception:  # the next reply schedules it again
            log.warning("could not queue a summary of %s", thread.thread_id, exc_info=True)

    async def _recall(self, tenant: str, thread: Thread, user: Message) -> list[Recalled]:
        if self._memory is None or user.memory not in (MemoryMode.AUTO, MemoryMode.READONLY):
            return []
        try:
            return await self._memory.recall(
                tenant, thread.assistant_id, thread.user_id, thread.thread_id, user.content
            )
        except Exception:  # a reply without memories beats no reply
            log.warning(
                "memory recall failed for %s; replying without it", user.message_id, exc_info=True
            )
            return []

    async def _schedule_extraction(
        self, tenant: str, assistant: Assistant, thread: Thread, user: Message, reply: Message
    ) -> str:
        if self._memory is None or user.memory is not MemoryMode.AUTO:
            return ""
        tool_outputs = (
            [
                e.content
                for e in thread.context
                if e.role is Role.TOOL and user.sequence < e.sequence < reply.sequence
            ]
            if assistant.memory_from_tool_outputs
            else []
        )
        try:
            return await self._memory.schedule_extraction(
                tenant,
                thread.assistant_id,
                thread.user_id,
                thread.thread_id,
                user.message_id,
                reply.message_id,
                reply.model,
                tool_outputs,
            )
        except Exception:
            log.warning("could not queue memory extraction for %s", reply.message_id, exc_info=True)
            return ""

    def _remember(self, tenant: str, thread: Thread, user: Message) -> asyncio.Future[None] | None:
        """Start indexing the user's message (memory AUTO); it is awaited
        before ``Completed`` so the next request can recall it."""
        if self._memory is None or user.memory is not MemoryMode.AUTO:
            return None
        return asyncio.ensure_future(
            self._shield.run(
                self._memory.remember(
                    tenant, thread.assistant_id, thread.user_id, thread.thread_id, user
                )
            )
        )

    async def _generate(
        self,
        tenant: str,
        assistant: Assistant,
        thread: Thread,
        user: Message,
        reply: Message,
        run: RunSpec,
    ) -> AsyncGenerator[ReplyEvent, None]:
        first_round = run.round == 1
        remembering = self._remember(tenant, thread, user) if first_round else None
        recalled = await self._recall(tenant, thread, user) if first_round else []
        if recalled:
            yield MemoryRecalled(recalled)
        fitted = await self._fit(assistant, thread, user, reply, recalled)
        got = _Received()

        async def finish(
            status: MessageStatus, error: str = "", pending: PendingRun | None = None
        ) -> Message:
            stored = await self._messages.finish(
                reply.message_id,
                content=got.text,
                status=status,
                usage=got.usage,
                error=error,
                tool_calls=got.calls,
            )
            if stored is None:  # the thread was deleted while the reply ran
                raise NotFound("thread", reply.thread_id)
            thread.run = pending
            await self._save_context(thread, [stored.entry()])
            return stored

        try:
            async for delta in self._receive(reply, fitted, run, got):
                yield delta
        except LoomError as exc:
            await self._shield.run(finish(MessageStatus.FAILED, exc.message))
            raise
        except Exception:
            log.exception("reply %s failed", reply.message_id)
            await self._shield.run(finish(MessageStatus.FAILED, "internal error"))
            raise
        except BaseException:  # the caller cancelled, or the server is stopping
            await self._shield.run(finish(MessageStatus.INCOMPLETE, "cancelled"))
            raise
        if got.usage is not None and got.usage.input_tokens:
            self._counter.calibrate(reply.model, fitted.base_tokens, got.usage.input_tokens)
        if got.calls:
            await self._remembered(remembering, user)
            yield await self._await_tools(run, user, reply, got.calls, finish)
            return
        length = got.finish_reason == "length"
        stored = await finish(MessageStatus.INCOMPLETE if length else MessageStatus.COMPLETE)
        await self._maybe_fold(tenant, assistant, thread, reply.model, fitted.limit)
        await self._remembered(remembering, user)
        operation = await self._schedule_extraction(tenant, assistant, thread, user, stored)
        yield Completed(stored, operation)

    async def _receive(
        self, reply: Message, fitted: Fitted, run: RunSpec, got: _Received
    ) -> AsyncGenerator[Delta, None]:
        """Stream the model's answer into ``got``, passing text on as deltas
        and saving what arrived every ``flush_interval`` seconds."""
        last_save = time.monotonic()
        stream = self._llm.stream(reply.model, fitted.turns, run.tools, run.tool_choice)
        async with contextlib.aclosing(stream) as chunks:
            async for chunk in chunks:
                got.usage = chunk.usage or got.usage
                got.finish_reason = chunk.finish_reason or got.finish_reason
                got.calls = chunk.tool_calls or got.calls
                if not chunk.text:
                    continue
                got.parts.append(chunk.text)
                yield Delta(chunk.text)
                if time.monotonic() - last_save >= self._flush_interval:
                    last_save = time.monotonic()
                    await self._messages.save_progress(reply.message_id, got.text)

    async def _repeat(
        self, tenant: str, req: SendRequest, record: RequestRecord
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Serve a request id seen before: replay its result, or finish what a
        dead attempt left, without ever calling the model for it twice."""
        if record.fingerprint != req.fingerprint():
            raise InvalidArgument(
                f"request_id {req.request_id!r} was already used for a different request; "
                "use a new request_id for a new message",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        if not record.assistant_message_id:
            stale = record.create_time < now() - timedelta(seconds=2 * self._lease_ttl)
            if stale and await self._requests.take_over(
                tenant, req.request_id, record.create_time, now()
            ):
                async for event in self._claimed(tenant, req):
                    yield event
                return
            raise Aborted(
                f"a request with request_id {req.request_id!r} is still being processed; "
                "retry shortly",
                reason="REQUEST_IN_PROGRESS",
            )
        reply = await self._messages.get(tenant, record.assistant_message_id)
        if reply is None:
            raise NotFound("thread", record.thread_id)
        if reply.status is MessageStatus.IN_PROGRESS:
            if not await self._leases.expired(record.thread_id):
                raise Aborted(
                    f"the reply to request_id {req.request_id!r} is still streaming; "
                    "retry once it has completed",
                    reason="REQUEST_IN_PROGRESS",
                )
            # Its writer died: taking the lease settles the reply as INCOMPLETE.
            async with self._leases.hold(tenant, record.thread_id) as lease:
                if lease.stale is not None:
                    await self._settle(tenant, await self._threads.get(tenant, record.thread_id))
            reply = await self._messages.get(tenant, record.assistant_message_id) or reply
        started = Started(
            thread_id=record.thread_id,
            thread_created=record.thread_created,
            user_message_id=record.user_message_id,
            assistant_message_id=record.assistant_message_id,
            model=record.model,
            assistant_id=record.assistant_id,
        )
        if reply.status is MessageStatus.FAILED and not reply.content:
            # The model was never heard from: run it now, in the same slot.
            async for event in self._retry_failed(tenant, record, reply, started):
                yield event
            return
        yield started
        if reply.content:
            yield Delta(reply.content)
        yield Completed(reply)

    async def _retry_failed(
        self, tenant: str, record: RequestRecord, reply: Message, started: Started
    ) -> AsyncGenerator[ReplyEvent, None]:
        async with self._leases.hold(tenant, record.thread_id) as lease:
            thread = await self._threads.get(tenant, record.thread_id)
            if lease.stale is not None:
                thread = await self._settle(tenant, thread)
            user = await self._messages.get(tenant, record.user_message_id)
            if (
                user is None
                or thread.message_count != reply.sequence + 1
                or not await self._messages.restart(tenant, reply.message_id, reply.model)
            ):
                raise FailedPrecondition(
                    "the first attempt with this request_id failed and the thread has moved on "
                    "since; send the message again with a new request_id",
                    reason="REQUEST_FAILED",
                )
            try:
                assistant = await self._assistants.get(tenant, record.assistant_id)
            except NotFound:
                raise NotFound("thread", record.thread_id) from None
            run = RunSpec(
                run_id=reply.run_id or ids.new_id(ids.RUN),
                round=1,
                tools=assistant.tools,
                own_tools=None,
                tool_choice="",
                request_id=user.request_id,
            )
            yield started
            async for event in self._generate(tenant, assistant, thread, user, reply, run):
                yield event
