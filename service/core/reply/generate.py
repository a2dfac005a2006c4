"""One round of a reply: recall, fit the prompt, stream the model's answer
(saving progress now and then), then settle the reply COMPLETE, INCOMPLETE
or FAILED, or leave it waiting for the tool outputs the model asked for.

How a round ends when something goes wrong: the model fails (stored
FAILED, the model's error raised); the caller goes away (INCOMPLETE); the
server shuts down (INCOMPLETE, ``ShuttingDown``); a newer message
interrupts it (INCOMPLETE, ``ReplyInterrupted``); the lease is lost to
another holder (``LeaseLost``: one last write, fenced by the store, keeps
what the caller received unless that holder wrote the reply already, and
nothing more is written); the database stops answering (the reply is
stored later with what the caller received, ``late.py``, and
``DatabaseUnavailable`` raised). Losing the lease, shutting down or an
interrupt cuts the wait for the model's next chunk short."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import timedelta

from service.core.budget import Fitted
from service.core.clock import now
from service.core.errors import (
    DatabaseUnavailable,
    LeaseLost,
    LoomError,
    NotFound,
    ReplyInterrupted,
    ResourceExhausted,
    ShuttingDown,
)
from service.core.generation import GenerationSettings, schema_error
from service.core.models import (
    Assistant,
    Completed,
    Delta,
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
from service.core.reply.late import LateWrites
from service.core.reply.writes import Ending, ReplyWriter, ThreadWrites
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
    # The message's generation settings over the assistant's.
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    instructions: str = ""  # added to the assistant's for this run only


class Replier:
    """Runs the rounds of replies, under the thread's lease."""

    def __init__(
        self, services: ReplyServices, policy: ReplyPolicy, shield: Shield, late: LateWrites
    ) -> None:
        self._llm = services.llm
        self._counter = services.counter
        self._hooks = ReplyHooks(services.memory, services.summarizer, shield)
        self._policy = policy
        self._shield = shield
        self._late = late

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
            announced = await self._hooks.recall(tenant, thread, user) if first_round else None
            if announced is not None:
                yield announced
            recalled = announced.memories if announced is not None else []
            fitted = await fit_prompt(
                self._counter,
                assistant=assistant,
                thread=thread,
                user=user,
                reply=reply,
                recalled=recalled,
                reply_tokens=run.generation.max_output_tokens,
                instructions=run.instructions,
            )
            writer = ReplyWriter(writes, reply, self._policy.flush_interval, self._shield)
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
        deltas, and store how it ended if it did not end well (see the
        module docstring)."""
        lease = writer.writes.lease
        try:
            chunks = self._llm.stream(
                writer.reply.model, fitted.turns, run.tools, run.tool_choice, run.generation
            )
            async with contextlib.aclosing(chunks) as stream:
                while True:
                    async with lease.interruptible():
                        chunk = await anext(stream, None)
                    if chunk is None:
                        break
                    if text := writer.received.add(chunk):
                        yield Delta(text)
                        writer.checkpoint()
        except LeaseLost:  # another holder has the thread: it settles the reply
            await self._shield.run(writer.keep_received())
            raise
        except DatabaseUnavailable:
            self._late.hand_off(writer, Ending(MessageStatus.INCOMPLETE, "database unavailable"))
            raise
        except ShuttingDown:
            await self._end(writer, Ending(MessageStatus.INCOMPLETE, "server shutting down"))
            raise
        except ReplyInterrupted:  # a newer message waits for the thread
            ending = Ending(MessageStatus.INCOMPLETE, "interrupted by a newer message")
            await self._end(writer, ending)
            raise
        except LoomError as exc:
            await self._end(writer, Ending(MessageStatus.FAILED, exc.message))
            raise
        except Exception:
            log.exception("reply %s failed", writer.reply.message_id)
            await self._end(writer, Ending(MessageStatus.FAILED, "internal error"))
            raise
        except BaseException:  # the caller cancelled
            await self._end(writer, Ending(MessageStatus.INCOMPLETE, "cancelled"))
            raise

    async def _end(self, writer: ReplyWriter, ending: Ending) -> None:
        """Store a reply that ended badly, even if the caller is gone; if the
        database does not take it, store it once it is back."""
        try:
            await self._shield.run(writer.settle(ending))
        except DatabaseUnavailable:
            self._late.hand_off(writer, ending)
        except (LeaseLost, NotFound):
            pass  # another holder settles it, or the thread is gone

    async def _settle(self, writer: ReplyWriter, ending: Ending) -> Message:
        """Store a reply the model finished.

        Raises:
            DatabaseUnavailable: the database did not take it; it is stored
                once the database is back, and the caller is told so.
        """
        try:
            return await writer.settle(ending)
        except DatabaseUnavailable:
            self._late.hand_off(writer, ending)
            raise DatabaseUnavailable(
                "the reply arrived whole but the database did not answer to store it; it is "
                f"stored {ending.status.name} with what you received once the database is back",
                metadata={"message_id": writer.reply.message_id},
            ) from None

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
        schema = run.generation.schema
        mismatch = schema_error(got.text, schema) if schema is not None else ""
        status = MessageStatus.INCOMPLETE if length else MessageStatus.COMPLETE
        stored = await self._settle(writer, Ending(status, schema_error=mismatch))
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
            await self._settle(writer, Ending(MessageStatus.INCOMPLETE, "tool round limit reached"))
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
            generation=run.generation,
        )
        await self._settle(writer, Ending(MessageStatus.REQUIRES_ACTION, pending=pending))
        return ToolCallsRequired(run.run_id, reply.message_id, list(calls), pending.expire_time)
