"""One round of a reply: recall, fit the prompt, stream the model's answer
(saving progress now and then), then settle the reply COMPLETE, INCOMPLETE
or FAILED, or leave it waiting for the tool outputs the model asked for."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import timedelta

from service.core.budget import Fitted
from service.core.clock import now
from service.core.errors import LoomError, ResourceExhausted
from service.core.models import (
    Assistant,
    Completed,
    Delta,
    MemoryRecalled,
    Message,
    MessageStatus,
    PendingRun,
    ReplyEvent,
    ToolCallsRequired,
    ToolSpec,
)
from service.core.reply.collaborators import ReplyPolicy, ReplyServices
from service.core.reply.fitting import fit_prompt
from service.core.reply.hooks import Remembering, ReplyHooks
from service.core.reply.writes import ReplyWriter, ThreadWrites
from service.core.shield import Shield

__all__ = ["Replier", "RunSpec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One reply in the making, over one or more tool rounds."""

    run_id: str
    round: int
    tools: list[ToolSpec]
    own_tools: tuple[ToolSpec, ...] | None  # the message's own tool set, if it had one
    tool_choice: str
    request_id: str = ""
    instructions: str = ""  # added to the assistant's for this run only


class Replier:
    """Runs the rounds of replies, under the thread's lease."""

    def __init__(self, services: ReplyServices, policy: ReplyPolicy, shield: Shield) -> None:
        self._llm = services.llm
        self._counter = services.counter
        self._hooks = ReplyHooks(services.memory, services.summarizer, shield)
        self._policy = policy
        self._shield = shield

    async def generate(
        self,
        tenant: str,
        assistant: Assistant,
        writes: ThreadWrites,
        user: Message,
        reply: Message,
        run: RunSpec,
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Stream one round of ``reply`` to ``user``'s message and store it.

        The first round recalls memories and, with its first delta, starts
        the episodic write of the user's message; whatever happens, the
        reply waits for that write.

        Raises:
            LoomError: the model failed (the reply is stored FAILED), or asked
                for tools too often (ResourceExhausted; stored INCOMPLETE).
        """
        thread = writes.thread
        first_round = run.round == 1
        remembering = self._hooks.remember(tenant, assistant, thread, user) if first_round else None
        try:
            recalled = await self._hooks.recall(tenant, thread, user) if first_round else []
            if recalled:
                yield MemoryRecalled(recalled)
            fitted = await fit_prompt(
                self._counter,
                assistant=assistant,
                thread=thread,
                user=user,
                reply=reply,
                recalled=recalled,
                instructions=run.instructions,
            )
            writer = ReplyWriter(writes, reply, self._policy.flush_interval)
            async with contextlib.aclosing(self._stream(writer, fitted, run)) as deltas:
                async for delta in deltas:
                    if remembering is not None:
                        remembering.begin()
                    yield delta
            yield await self._end_round(tenant, assistant, writer, fitted, user, run, remembering)
        finally:
            await self._observe(remembering)

    async def _observe(self, remembering: Remembering | None) -> None:
        """Wait for the episodic write, even if the caller is cancelled."""
        if remembering is not None:
            await self._shield.run(remembering.wait())

    async def _stream(
        self, writer: ReplyWriter, fitted: Fitted, run: RunSpec
    ) -> AsyncGenerator[Delta, None]:
        """Stream the model's answer into ``writer``, passing text on as
        deltas. If the model fails, the reply is stored FAILED with what
        arrived; if the caller goes away (or the server stops), INCOMPLETE."""
        model = writer.reply.model
        try:
            chunks = self._llm.stream(model, fitted.turns, run.tools, run.tool_choice)
            async with contextlib.aclosing(chunks) as stream:
                async for chunk in stream:
                    if text := writer.received.add(chunk):
                        yield Delta(text)
                        await writer.checkpoint()
        except LoomError as exc:
            await self._shield.run(writer.settle(MessageStatus.FAILED, exc.message))
            raise
        except Exception:
            log.exception("reply %s failed", writer.reply.message_id)
            await self._shield.run(writer.settle(MessageStatus.FAILED, "internal error"))
            raise
        except BaseException:  # the caller cancelled, or the server is stopping
            await self._shield.run(writer.settle(MessageStatus.INCOMPLETE, "cancelled"))
            raise

    async def _end_round(
        self,
        tenant: str,
        assistant: Assistant,
        writer: ReplyWriter,
        fitted: Fitted,
        user: Message,
        run: RunSpec,
        remembering: Remembering | None,
    ) -> Completed | ToolCallsRequired:
        """Store a reply the model finished: waiting for tools if it asked
        for some, else COMPLETE (INCOMPLETE at the model's length limit),
        with a summary fold and fact extraction queued."""
        reply, got = writer.reply, writer.received
        if got.usage is not None and got.usage.input_tokens:
            self._counter.calibrate(reply.model, fitted.base_tokens, got.usage.input_tokens)
        if got.calls:
            await self._observe(remembering)
            return await self._await_tools(writer, user, run)
        length = got.finish_reason == "length"
        stored = await writer.settle(MessageStatus.INCOMPLETE if length else MessageStatus.COMPLETE)
        thread = writer.thread
        await self._hooks.fold(tenant, assistant, thread, reply.model, fitted.limit)
        await self._observe(remembering)
        operation = await self._hooks.schedule_extraction(tenant, assistant, thread, user, stored)
        return Completed(stored, operation)

    async def _await_tools(
        self, writer: ReplyWriter, user: Message, run: RunSpec
    ) -> ToolCallsRequired:
        """End a round in which the model asked for tools: the run waits for
        their outputs (durably, on the thread) unless it is past the cap.

        Raises:
            ResourceExhausted: the model asked for tools too many times.
        """
        limit = self._policy.max_tool_rounds
        if run.round >= limit:
            await writer.settle(MessageStatus.INCOMPLETE, "tool round limit reached")
            raise ResourceExhausted(
                f"the model asked for tools {run.round} times in one reply, the limit "
                f"(LOOM_MAX_TOOL_ROUNDS={limit}); the run was stopped and the thread is free",
                reason="TOOL_ROUNDS_EXCEEDED",
            )
        reply, calls = writer.reply, writer.received.calls
        pending = PendingRun(
            run_id=run.run_id,
            message_id=reply.message_id,
            user_message_id=user.message_id,
            tool_call_ids=tuple(c.tool_call_id for c in calls),
            round=run.round,
            model=reply.model,
            expire_time=now() + timedelta(seconds=self._policy.run_expiry),
            tools=run.own_tools,
            tool_choice=run.tool_choice,
            request_id=run.request_id,
        )
        await writer.settle(MessageStatus.REQUIRES_ACTION, pending=pending)
        return ToolCallsRequired(run.run_id, reply.message_id, list(calls), pending.expire_time)
