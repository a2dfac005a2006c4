"""Tool runs: a reply that waits for tool outputs is continued when they are
submitted (SubmitToolOutputs), closed when it is cancelled (CancelRun), and
expires when its time is up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

from service.core import ids
from service.core.clock import now
from service.core.errors import FailedPrecondition, NotFound, ThreadBusy
from service.core.models import Message, MessageStatus, PendingRun, ReplyEvent
from service.core.reply.build import RunMessages, before_end, started
from service.core.reply.collaborators import ReplyStores
from service.core.reply.generate import Replier, RunSpec
from service.core.reply.recovery import Recovery
from service.core.reply.writes import ThreadWrites
from service.core.tools import check_outputs

__all__ = ["ToolRuns"]


class ToolRuns:
    """Runs waiting for tool outputs, on threads whose lease is held."""

    def __init__(self, stores: ReplyStores, recovery: Recovery, replier: Replier) -> None:
        self._stores = stores
        self._recovery = recovery
        self._replier = replier

    async def refuse_if_waiting(self, tenant: str, writes: ThreadWrites) -> None:
        """Under the thread's lease: expire its pending run if its time is
        up, else refuse while one waits for tool outputs.

        Raises:
            ThreadBusy: a run waits for tool outputs.
        """
        run = writes.thread.run
        if run is None:
            return
        if run.expire_time > now():
            raise ThreadBusy(
                writes.thread.thread_id,
                waiting=f"run {run.run_id!r} waits for tool outputs: submit them with "
                "SubmitToolOutputs or cancel the run with CancelRun",
            )
        await self._close(tenant, writes, run, MessageStatus.EXPIRED)

    async def submit(
        self,
        tenant: str,
        thread_id: str,
        run_id: str,
        outputs: list[tuple[str, str]],
        instructions: str = "",
    ) -> AsyncGenerator[ReplyEvent, None]:
        """Answer a run's pending tool calls and continue its reply (with
        ``instructions`` added to the assistant's for the next round).

        Raises:
            InvalidArgument: malformed ids; missing, unknown or duplicate outputs.
            NotFound: no such thread, or no such run waiting on it.
            FailedPrecondition: the run expired.
            ThreadBusy: a reply is streaming on the thread.
        """
        ids.check_id(ids.RUN, run_id, "run_id")
        await self._stores.threads.get(tenant, thread_id)
        end: list[ReplyEvent] = []
        async with self._recovery.hold(tenant, thread_id) as writes:
            pending = writes.thread.run
            if pending is None or pending.run_id != run_id:
                raise NotFound("run", run_id)
            if pending.expire_time <= now():
                await self._close(tenant, writes, pending, MessageStatus.EXPIRED)
                raise FailedPrecondition(
                    f"run {run_id!r} expired at {pending.expire_time:%Y-%m-%dT%H:%M:%SZ} before "
                    "its tool outputs came; send the message again",
                    reason="RUN_EXPIRED",
                )
            answers = check_outputs(pending.tool_call_ids, outputs)
            assistant = await self._stores.assistants.get(tenant, writes.thread.assistant_id)
            user = await self._stores.messages.get(tenant, pending.user_message_id)
            waiting = await self._stores.messages.get(tenant, pending.message_id)
            if user is None or waiting is None:
                raise NotFound("run", run_id)
            reply = await self._answer(tenant, writes, pending, answers, user, waiting)
            run = RunSpec(
                run_id=run_id,
                round=pending.round + 1,
                tools=assistant.tools if pending.tools is None else list(pending.tools),
                own_tools=pending.tools,
                tool_choice=pending.tool_choice,
                request_id=pending.request_id,
                instructions=instructions,
            )
            yield started(
                thread_id=thread_id,
                thread_created=False,
                assistant_id=assistant.assistant_id,
                user_message_id=user.message_id,
                reply=reply,
            )
            events = self._replier.generate(tenant, assistant, writes, user, reply, run)
            async with contextlib.aclosing(before_end(events, end)) as stream:
                async for event in stream:
                    yield event
        for event in end:  # the thread is free again
            yield event

    async def _answer(
        self,
        tenant: str,
        writes: ThreadWrites,
        pending: PendingRun,
        answers: dict[str, str],
        user: Message,
        waiting: Message,
    ) -> Message:
        """Store the tool outputs and an empty reply for the next round, and
        mark the message that asked for them answered; return the reply."""
        new = RunMessages(tenant, writes.thread.thread_id, pending.run_id, user.memory, now())
        *tool_messages, reply = await writes.append(
            [
                *(new.tool(call_id, answers[call_id]) for call_id in pending.tool_call_ids),
                new.reply(pending.model),
            ]
        )
        answered = await writes.finish(
            waiting.message_id,
            content=waiting.content,
            status=MessageStatus.COMPLETE,
            usage=waiting.usage,
            tool_calls=waiting.tool_calls,
        )
        await writes.save([answered.entry(), *(m.entry() for m in tool_messages)], run=None)
        return reply

    async def cancel(self, tenant: str, thread_id: str, run_id: str) -> Message:
        """Cancel a run that waits for tool outputs; return its message.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such thread, or no such run waiting on it.
            ThreadBusy: a reply is streaming on the thread.
        """
        ids.check_id(ids.RUN, run_id, "run_id")
        await self._stores.threads.get(tenant, thread_id)
        # A dead holder's reply is settled first, as by any holder.
        async with self._recovery.hold(tenant, thread_id) as writes:
            run = writes.thread.run
            if run is None or run.run_id != run_id:
                raise NotFound("run", run_id)
            return await self._close(tenant, writes, run, MessageStatus.CANCELLED)

    async def _close(
        self, tenant: str, writes: ThreadWrites, run: PendingRun, status: MessageStatus
    ) -> Message:
        """End a waiting run: its message takes ``status``; the thread is free."""
        waiting = await self._stores.messages.get(tenant, run.message_id)
        if waiting is None:
            raise NotFound("run", run.run_id)
        closed = await writes.finish(
            waiting.message_id,
            content=waiting.content,
            status=status,
            usage=waiting.usage,
            error=status.value,
            tool_calls=waiting.tool_calls,
        )
        await writes.save([closed.entry()], run=None)
        return closed
