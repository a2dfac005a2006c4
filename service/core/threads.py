"""Threads and their messages: create, read, list (with filters), update,
delete, and delete when they expire."""

from __future__ import annotations

import builtins
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from service.core import ids
from service.core.assistants import Assistants
from service.core.clock import now
from service.core.errors import InvalidArgument, NotFound
from service.core.filtering import ORDERED, FieldSpec, parse_filter
from service.core.jobs import JobRunner
from service.core.limits import MAX_PAGE_SIZE, MAX_USER_ID
from service.core.models import Message, Page, Thread, Usage
from service.core.paging import created, open_cursor
from service.core.ports import MemoryPort, MessageStore, ThreadStore
from service.core.retention import Retention, expire_at
from service.core.validation import check_metadata, check_text, check_update_mask

__all__ = ["FILTERS", "UPDATABLE_FIELDS", "Expiration", "ThreadDraft", "Threads"]

log = logging.getLogger(__name__)

_ORDERS = {"": False, "sequence": False, "sequence asc": False, "sequence desc": True}
UPDATABLE_FIELDS = ("metadata", "assistant_id", "expire_time", "ttl", "expire_memories")
# What ListThreads can filter on (service.core.filtering): equality on the
# ids and metadata keys, ranges on update_time (each is a MongoDB query).
_EQUAL = frozenset({"="})
FILTERS = {
    "user_id": FieldSpec("string", _EQUAL),
    "assistant_id": FieldSpec("string", _EQUAL),
    "metadata": FieldSpec("string", _EQUAL, map=True),
    "update_time": FieldSpec("timestamp", ORDERED - {"!="}),
}
_EXAMPLE = 'metadata.ticket = "123" AND update_time >= "2025-01-01T00:00:00Z"'


@dataclass(frozen=True, slots=True)
class Expiration:
    """When a thread is to expire, as the caller asked: at a time, after a
    time-to-live from the call, or never (neither); and whether its memories
    go with it."""

    expire_time: datetime | None = None
    ttl: timedelta | None = None
    expire_memories: bool = False


@dataclass(slots=True)
class ThreadDraft:
    """Caller-supplied fields of a thread, for an update."""

    assistant_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    expiration: Expiration = Expiration()


class Threads:
    """The thread use cases; every call is scoped to one tenant. With
    ``memory``, deleting a thread can delete the memories learnt in it; with
    ``jobs``, threads that expire are deleted by a background job."""

    def __init__(
        self,
        assistants: Assistants,
        threads: ThreadStore,
        messages: MessageStore,
        *,
        memory: MemoryPort | None = None,
        jobs: JobRunner | None = None,
    ) -> None:
        self._assistants = assistants
        self._threads = threads
        self._messages = messages
        self._memory = memory
        self._retention = Retention(jobs, self.purge) if jobs is not None else None

    async def create(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        metadata: dict[str, str],
        expiration: Expiration = Expiration(),
    ) -> Thread:
        """Create an empty thread under an assistant (the default one if
        ``assistant_id`` is empty).

        Raises:
            InvalidArgument: malformed id, long user id, bad metadata, an
                expiration in the past.
            NotFound: no such assistant.
        """
        check_text(user_id, "user_id", MAX_USER_ID)
        metadata = check_metadata(metadata)
        t = now()
        expire_time = expire_at(expiration.expire_time, expiration.ttl, t)
        if assistant_id:
            assistant = await self._assistants.get(tenant, assistant_id)
        else:
            assistant = await self._assistants.default(tenant)
        thread = Thread(
            thread_id=ids.new_id(ids.THREAD),
            tenant=tenant,
            assistant_id=assistant.assistant_id,
            user_id=user_id,
            metadata=metadata,
            create_time=t,
            update_time=t,
            expire_time=expire_time,
            expire_memories=expiration.expire_memories,
        )
        await self.insert(thread)
        return thread

    async def insert(self, thread: Thread) -> None:
        """Store a new thread (its expiry job queued first, if it expires);
        if its assistant was deleted meanwhile, delete it again.

        Raises:
            NotFound: the assistant is gone.
        """
        tenant = thread.tenant
        if thread.expire_time is not None:
            await self.schedule_purge(tenant, thread.thread_id, thread.expire_time)
        await self._threads.insert(thread)
        # An assistant deleted while this insert ran must not keep an orphan.
        try:
            await self._assistants.get(tenant, thread.assistant_id)
        except NotFound:
            await self._threads.delete(tenant, thread.thread_id)
            raise

    async def get(self, tenant: str, thread_id: str, field: str = "thread_id") -> Thread:
        """Return the thread.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such thread for this tenant.
        """
        ids.check_id(ids.THREAD, thread_id, field)
        thread = await self._threads.get(tenant, thread_id)
        if thread is None:
            raise NotFound("thread", thread_id)
        return thread

    async def show(self, tenant: str, thread_id: str) -> Thread:
        """The thread as GetThread shows it: with its usage totals, its
        replies' and its background jobs' together.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such thread for this tenant.
        """
        return (await self.with_totals([await self.get(tenant, thread_id)]))[0]

    async def with_totals(self, threads: builtins.list[Thread]) -> builtins.list[Thread]:
        """``threads`` with the tokens their background jobs spent added to
        their usage (one read for all of them)."""
        if not threads:
            return threads
        spent = await self._threads.job_usage(threads[0].tenant, [t.thread_id for t in threads])
        for thread in threads:
            if extra := spent.get(thread.thread_id):
                thread.usage = Usage(
                    thread.usage.input_tokens + extra.input_tokens,
                    thread.usage.output_tokens + extra.output_tokens,
                )
        return threads

    async def list(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        page_size: int,
        page_token: str,
        filter_text: str = "",
    ) -> Page[Thread]:
        """One page of threads, newest first, optionally filtered (by the
        assistant, the user, and ``filter_text`` over ``FILTERS``).

        Raises:
            InvalidArgument: malformed filter, negative page size, bad token.
        """
        if assistant_id:
            ids.check_id(ids.ASSISTANT, assistant_id, "assistant_id")
        check_text(user_id, "user_id", MAX_USER_ID)
        where = parse_filter(filter_text, FILTERS, example=_EXAMPLE)
        filters: dict[str, object] = {"list": "threads", "a": assistant_id, "u": user_id}
        if where:
            filters["f"] = where.canonical()
        cursor = open_cursor(tenant, page_size, page_token, filters, "created")
        items = await self._threads.find_page(
            tenant, assistant_id, user_id, cursor.fetch, cursor.after, where.comparisons
        )
        page = cursor.page(items, lambda t: created(t.create_time, t.thread_id))
        await self.with_totals(page.items)
        return page

    async def delete(self, tenant: str, thread_id: str, *, forget: bool = False) -> int:
        """Delete the thread and its messages (and, with ``forget``, the
        memories learnt in it); return how many messages.

        The thread is hidden first (recording ``forget``), then its children
        go, then the thread: a crash part-way is finished at the next start.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such thread.
        """
        ids.check_id(ids.THREAD, thread_id, "thread_id")
        thread = await self._threads.get(tenant, thread_id)
        if thread is None or not await self._threads.mark_deleting(tenant, thread_id, forget):
            raise NotFound("thread", thread_id)
        return await self._finish_delete(tenant, thread.assistant_id, thread_id, forget)

    async def _finish_delete(
        self, tenant: str, assistant_id: str, thread_id: str, forget: bool
    ) -> int:
        # Messages before memories: a memory job that indexed a message of
        # this thread checks afterwards that the message still exists (and
        # unwrites it if not); so either it sees them gone, or it wrote
        # before the forgetting below, which then removes what it wrote.
        count = await self._messages.delete_thread(tenant, thread_id)
        if forget and self._memory is not None:
            await self._memory.forget_thread(tenant, assistant_id, thread_id)
        await self._threads.delete(tenant, thread_id)
        return count

    async def resume_deletes(self) -> int:
        """Finish thread deletions that a crash interrupted; return how many."""
        pending = await self._threads.pending_deletes()
        for p in pending:
            log.info("finishing interrupted deletion of thread %s", p.thread_id)
            await self._finish_delete(p.tenant, p.assistant_id, p.thread_id, p.forget)
        return len(pending)

    async def list_messages(
        self, tenant: str, thread_id: str, page_size: int, page_token: str, order_by: str
    ) -> Page[Message]:
        """One page of a thread's messages in sequence order.

        Raises:
            InvalidArgument: malformed id, bad order_by, page size or token.
            NotFound: no such thread.
        """
        order = " ".join(order_by.lower().split())
        if order not in _ORDERS:
            raise InvalidArgument(
                f"order_by {order_by[:40]!r} is not supported; use 'sequence' or 'sequence desc'",
                field="order_by",
            )
        descending = _ORDERS[order]
        filters: dict[str, object] = {"list": "messages", "t": thread_id, "d": descending}
        cursor = open_cursor(tenant, page_size, page_token, filters, "position")
        thread = await self.get(tenant, thread_id)
        # A batch still being appended (or left by a writer that died) is not shown.
        items = await self._messages.find_page(
            tenant, thread_id, cursor.fetch, cursor.after, descending, before=thread.open_batch
        )
        return cursor.page(items, lambda m: m.sequence)

    async def find_message(self, tenant: str, message_id: str) -> Message | None:
        """One message, if the tenant has it (and its thread is not gone).

        Raises:
            InvalidArgument: malformed id.
        """
        ids.check_id(ids.MESSAGE, message_id, "message_id")
        message = await self._messages.get(tenant, message_id)
        if message is None or await self._threads.get(tenant, message.thread_id) is None:
            return None
        return message

    async def read_messages(
        self, tenant: str, thread_id: str, *, after: int | None, limit: int, descending: bool
    ) -> builtins.list[Message]:
        """Up to ``limit`` (1 to 1000) messages of a thread in sequence order,
        starting after sequence ``after`` (None: from the first, or the last
        when ``descending``): for doors whose cursors are positions in the
        thread rather than ``list_messages``' page tokens.

        Raises:
            InvalidArgument: malformed id, a limit out of range.
            NotFound: no such thread.
        """
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"limit must be 1 to {MAX_PAGE_SIZE}", field="limit")
        await self.get(tenant, thread_id)
        return await self._messages.find_page(tenant, thread_id, limit, after, descending)

    async def check_update(
        self, tenant: str, thread_id: str, draft: ThreadDraft, paths: builtins.list[str]
    ) -> dict[str, Any]:
        """The changes an update (AIP-134) makes, checked: ``paths`` names the
        fields of ``draft`` to apply (``expire_time`` and ``ttl`` both set
        the expiration: none if neither is given).

        Raises:
            InvalidArgument: malformed ids, a bad mask or a bad value.
            NotFound: no such thread, or no such assistant to move it to.
        """
        ids.check_id(ids.THREAD, thread_id, "thread.thread_id")
        wanted = check_update_mask(paths, UPDATABLE_FIELDS)
        changes: dict[str, Any] = {}
        if "metadata" in wanted:
            changes["metadata"] = check_metadata(draft.metadata, "thread.metadata")
        if "expire_time" in wanted or "ttl" in wanted:
            e = draft.expiration
            changes["expire_time"] = expire_at(e.expire_time, e.ttl, now())
        if "expire_memories" in wanted:
            changes["expire_memories"] = draft.expiration.expire_memories
        if "assistant_id" in wanted:
            ids.check_id(ids.ASSISTANT, draft.assistant_id, "thread.assistant_id")
            changes["assistant_id"] = (
                await self._assistants.get(tenant, draft.assistant_id)
            ).assistant_id
        await self.get(tenant, thread_id, "thread.thread_id")
        return changes

    async def apply_update(self, tenant: str, thread_id: str, changes: dict[str, Any]) -> Thread:
        """Store ``changes`` from ``check_update`` (queueing the expiry job
        of a new expiration first).

        Raises:
            NotFound: the thread is gone.
        """
        expire_time = changes.get("expire_time")
        if isinstance(expire_time, datetime):
            await self.schedule_purge(tenant, thread_id, expire_time)
        updated = await self._threads.update(tenant, thread_id, changes, now())
        if updated is None:
            raise NotFound("thread", thread_id)
        return updated

    async def purge(self, tenant: str, thread_id: str) -> dict[str, Any]:
        """Delete the thread if it has expired, as DeleteThread would (with
        its memories if it asked for that); or, if no such thread exists,
        any messages left under its id (a fork whose copy never finished).
        Say what was done."""
        pending = await self._threads.claim_expired(tenant, thread_id, now())
        if pending is not None:
            log.info("deleting expired thread %s", thread_id)
            count = await self._finish_delete(
                tenant, pending.assistant_id, thread_id, pending.forget
            )
            return {"deleted": "thread", "messages": count}
        if await self._threads.get(tenant, thread_id) is None:
            count = await self._messages.delete_thread(tenant, thread_id)
            return {"deleted": "messages" if count else "nothing", "messages": count}
        return {"deleted": "nothing"}

    async def schedule_purge(self, tenant: str, thread_id: str, when: datetime) -> None:
        """Queue ``purge`` of the thread at ``when``."""
        if self._retention is None:
            log.warning("no job runner: thread %s will not be purged at %s", thread_id, when)
            return
        await self._retention.schedule(tenant, thread_id, when)
