"""AddMessages: a batch of messages stored without a reply (imported history,
what a human agent said, a seeded thread), under the thread's lease like a
reply, so a busy thread refuses it.

A batch is stored whole or not at all. Under the lease the thread notes the
batch as open, the messages are inserted at the next sequence numbers (one
round trip), and one write then stores the thread's context and count and
closes the batch. Readers never see an open batch (ListMessages stops before
it, prompts are built from the context), and whoever holds the thread's
lease next deletes a batch whose writer died.

With a ``request_id`` the messages' ids are derived from it, so a retry
finds what the first attempt stored: if it is there, the call returns it;
if the first attempt died and its batch was rolled back, the retry stores
the batch again in the same thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.core import ids
from service.core.batches import BatchRequest, NewMessage, check_against_thread, check_batch
from service.core.clock import now
from service.core.errors import Aborted, InvalidArgument
from service.core.limits import MAX_REQUEST_ID, MAX_USER_ID
from service.core.models import (
    Assistant,
    MemoryMode,
    Message,
    MessageStatus,
    Role,
    Thread,
)
from service.core.ports import MemoryPort, RequestRecord
from service.core.reply.collaborators import ReplyPolicy, ReplyServices, ReplyStores
from service.core.reply.fitting import prompt_limit
from service.core.reply.hooks import ReplyHooks
from service.core.reply.recovery import Recovery
from service.core.reply.request import assistant_for, thread_assistant
from service.core.reply.runs import ToolRuns
from service.core.reply.writes import ThreadWrites
from service.core.validation import check_text

__all__ = ["Added", "Importer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Added:
    """What AddMessages stored: the thread after it, the messages in order,
    and the memory operation it queued (memory AUTO)."""

    thread: Thread
    thread_created: bool
    messages: list[Message]
    memory_operation_id: str = ""


class Importer:
    """Stores batches of messages without a reply."""

    def __init__(
        self,
        stores: ReplyStores,
        services: ReplyServices,
        policy: ReplyPolicy,
        recovery: Recovery,
        runs: ToolRuns,
    ) -> None:
        self._stores = stores
        self._counter = services.counter
        self._memory: MemoryPort | None = services.memory
        self._hooks = ReplyHooks(services.memory, services.summarizer, stores.shield)
        self._policy = policy
        self._recovery = recovery
        self._runs = runs

    async def add(self, tenant: str, req: BatchRequest) -> Added:
        """Append ``req``'s messages to its thread (a new one without a
        thread id).

        Raises:
            InvalidArgument: a malformed request or message (see
                ``check_batch``), a request id used for another request.
            NotFound: no such thread or assistant.
            ThreadBusy: a reply runs on the thread, or a run waits for tools.
            Aborted: the first attempt with this request id is still running.
        """
        _check_request(req)
        check_batch(req.messages, self._policy.max_content, now())
        if not req.request_id:
            return await self._store(tenant, req, "", repeat=False)
        fingerprint = req.fingerprint()
        requests = self._stores.requests
        record = await requests.claim(tenant, req.request_id, fingerprint, now())
        if record is None:  # the first attempt: nothing can be stored under its ids yet
            return await self._released_on_failure(tenant, req, fingerprint, repeat=False)
        if record.fingerprint != fingerprint:
            raise InvalidArgument(
                f"request_id {req.request_id!r} was already used for a different request; "
                "use a new request_id for a new batch",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        if record.thread_id:  # finds the batch, or stores it again
            return await self._store(tenant, req, fingerprint, repeat=True)
        stale = record.create_time < now() - timedelta(seconds=2 * self._policy.lease_ttl)
        if stale and await requests.take_over(tenant, req.request_id, record.create_time, now()):
            return await self._released_on_failure(tenant, req, fingerprint, repeat=True)
        raise Aborted(
            f"a request with request_id {req.request_id!r} is still being processed; retry shortly",
            reason="REQUEST_IN_PROGRESS",
        )

    async def _released_on_failure(
        self, tenant: str, req: BatchRequest, fingerprint: str, *, repeat: bool
    ) -> Added:
        """Store the batch under a request id this call claimed; if that
        fails before the claim is bound (so nothing was stored), drop the
        claim so that the caller can retry."""
        try:
            return await self._store(tenant, req, fingerprint, repeat=repeat)
        except BaseException:
            await self._stores.shield.run(self._stores.requests.release(tenant, req.request_id))
            raise

    async def _store(
        self, tenant: str, req: BatchRequest, fingerprint: str, *, repeat: bool
    ) -> Added:
        """Store the batch, in the thread named or a new one; for a
        ``repeat`` of a request id, first look for what an earlier attempt
        stored (in that attempt's thread)."""
        created = not req.thread_id
        # A lookup, not a habit: on FerretDB over SQLite even a read by _id
        # costs more as the messages collection grows.
        prior = await self._first_message(tenant, req) if repeat else None
        if prior is not None:  # a repeat: answered without the lease if the batch is whole
            thread = await self._stores.threads.get(tenant, prior.thread_id)
            if done := await self._stored(tenant, req, thread, prior):
                assistant = await thread_assistant(
                    self._stores, tenant, thread, req.assistant_id, req.user_id
                )
                return await self._result(tenant, thread, assistant, done, created, fresh=False)
        thread_id = prior.thread_id if prior is not None else req.thread_id
        new: Thread | None = None
        if not thread_id:
            owner = await assistant_for(self._stores, tenant, req.assistant_id)
            check_against_thread(req.messages, ())
            new = await self._stores.threads.create(tenant, owner.assistant_id, req.user_id, {})
            thread_id = new.thread_id
        stored: list[Message] = []
        try:
            # The thread is read as claimed under the lease.
            async with self._recovery.hold(tenant, thread_id) as writes:
                assistant = await thread_assistant(
                    self._stores, tenant, writes.thread, req.assistant_id, req.user_id
                )
                await self._runs.refuse_if_waiting(tenant, writes)
                # A first attempt whose batch was open may have finished since
                # it was first looked at; if it was rolled back, store it again.
                if prior is not None:
                    stored = await self._stored(tenant, req, writes.thread)
                stored = stored or await self._append(tenant, req, assistant, writes, fingerprint)
        finally:
            if created and not stored:
                # Nothing reached the thread made for it: leave no empty one behind.
                await self._stores.shield.run(self._stores.thread_store.delete(tenant, thread_id))
        return await self._result(tenant, writes.thread, assistant, stored, created, fresh=True)

    async def _append(
        self,
        tenant: str,
        req: BatchRequest,
        assistant: Assistant,
        writes: ThreadWrites,
        fingerprint: str,
    ) -> list[Message]:
        """Under the lease: check the batch against the thread, then store it
        as one batch (rolled back if anything fails before it is closed)."""
        thread = writes.thread
        check_against_thread(req.messages, thread.context)
        memory = req.memory if req.memory is not MemoryMode.UNSPECIFIED else assistant.memory_mode
        messages = _messages(tenant, thread.thread_id, req, memory, now())
        await writes.open_batch()
        try:
            stored = await writes.append(messages)
            if req.request_id:  # where the batch went, so that a retry finds it
                record = RequestRecord(
                    fingerprint, now(), thread_id=thread.thread_id, thread_created=not req.thread_id
                )
                await self._stores.requests.bind(tenant, req.request_id, record)
            await writes.save([m.entry() for m in stored], writes.thread.run)
        except BaseException:
            await self._stores.shield.run(writes.roll_back(tenant))
            raise
        return stored

    async def _first_message(self, tenant: str, req: BatchRequest) -> Message | None:
        """The batch's first message as a first attempt stored it, if any."""
        if not req.request_id:
            return None
        return await self._stores.messages.get(tenant, _message_ids(tenant, req)[0])

    async def _stored(
        self, tenant: str, req: BatchRequest, thread: Thread, first: Message | None = None
    ) -> list[Message]:
        """The batch as a first attempt with this request id stored it in
        ``thread``, if that attempt finished (its batch is not open); else []."""
        found = first or await self._first_message(tenant, req)
        if found is None or found.thread_id != thread.thread_id:
            return []
        if thread.open_batch is not None and found.sequence >= thread.open_batch:
            return []
        return await self._stores.messages.find_page(
            tenant, thread.thread_id, len(req.messages), found.sequence - 1, False
        )

    async def _result(
        self,
        tenant: str,
        thread: Thread,
        assistant: Assistant,
        stored: list[Message],
        created: bool,
        *,
        fresh: bool,
    ) -> Added:
        """The answer for a stored batch, once its memory and summary work
        is started (indexing and folding only the first time: a repeat
        leaves indexing to the extraction job, which indexes what it reads)."""
        model = assistant.model or self._policy.default_model
        operation = await self._remember(tenant, thread, stored, model, index=fresh)
        if fresh:
            limit = prompt_limit(self._counter, assistant, model)
            await self._hooks.fold(tenant, assistant, thread, model, limit)
        [shown] = await self._stores.threads.with_totals([thread])
        return Added(shown, created, stored, operation)

    async def _remember(
        self, tenant: str, thread: Thread, stored: list[Message], model: str, *, index: bool
    ) -> str:
        """With memory AUTO: index the batch's user messages and queue one
        extraction job for the batch; return its id ("" if none)."""
        users = [m for m in stored if m.role is Role.USER]
        if self._memory is None or not users or stored[0].memory is not MemoryMode.AUTO:
            return ""
        if index:
            # Shielded: a caller gone mid-write must not skip the check after it.
            write = self._index_batch(self._memory, tenant, thread, users)
            if await self._stores.shield.run(write):
                return ""
        return await self._memory.schedule_batch_extraction(
            tenant,
            thread.assistant_id,
            thread.user_id,
            thread.thread_id,
            stored,
            model,
        )

    async def _index_batch(
        self, memory: MemoryPort, tenant: str, thread: Thread, users: list[Message]
    ) -> bool:
        """Index the batch's user messages; True if the thread went meanwhile
        (and what was written is unwritten: ``_gone``)."""
        try:
            await memory.remember_all(
                tenant, thread.assistant_id, thread.user_id, thread.thread_id, users
            )
        except Exception:  # the extraction job indexes them again
            log.warning("indexing the batch in %s failed", thread.thread_id, exc_info=True)
        return await self._gone(tenant, thread, users)

    async def _gone(self, tenant: str, thread: Thread, users: list[Message]) -> bool:
        """Whether the thread was deleted (or expired) while ``users`` were
        being indexed; if so what was written for them is unwritten. A
        deletion hides the thread before it forgets the thread's memories:
        so either this check sees it hidden, or the forgetting comes after
        the write and removes it. The extraction job undoes its own writes
        the same way (memory/learning.py)."""
        if self._memory is None or await self._stores.thread_store.get(tenant, thread.thread_id):
            return False
        if thread.expire_memories:  # all it taught goes, this batch's writes with it
            await self._memory.forget_thread(tenant, thread.assistant_id, thread.thread_id)
        else:
            await self._memory.unremember(tenant, thread.assistant_id, users)
        return True


def _check_request(req: BatchRequest) -> None:
    if req.thread_id:
        ids.check_id(ids.THREAD, req.thread_id, "thread_id")
    if req.assistant_id:
        ids.check_id(ids.ASSISTANT, req.assistant_id, "assistant_id")
    check_text(req.user_id, "user_id", MAX_USER_ID)
    check_text(req.request_id, "request_id", MAX_REQUEST_ID)


def _message_ids(tenant: str, req: BatchRequest) -> list[str]:
    """The batch's message ids: derived from the request id when there is
    one (so that a retry finds them), else new."""
    if req.request_id:
        return [
            ids.derived_id(ids.MESSAGE, tenant, req.request_id, str(i))
            for i in range(len(req.messages))
        ]
    return [ids.new_id(ids.MESSAGE) for _ in req.messages]


def _messages(
    tenant: str, thread_id: str, req: BatchRequest, memory: MemoryMode, at: datetime
) -> list[Message]:
    """The batch as messages to store, whole (COMPLETE)."""
    return [
        _message(tenant, thread_id, message_id, new, memory, at)
        for message_id, new in zip(_message_ids(tenant, req), req.messages, strict=True)
    ]


def _message(
    tenant: str, thread_id: str, message_id: str, new: NewMessage, memory: MemoryMode, at: datetime
) -> Message:
    if new.role is None:  # check_batch refuses it first
        raise InvalidArgument("every message needs a role", field="messages")
    return Message(
        message_id=message_id,
        tenant=tenant,
        thread_id=thread_id,
        role=new.role,
        content=new.content,
        status=MessageStatus.COMPLETE,
        model=new.model if new.role is Role.ASSISTANT else "",
        metadata=dict(new.metadata),
        memory=memory,
        create_time=new.create_time or at,
        tool_calls=list(new.tool_calls),
        tool_call_id=new.tool_call_id,
    )
