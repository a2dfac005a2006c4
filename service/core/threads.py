"""Threads and their messages: create, read, list, delete."""

from __future__ import annotations

import logging

from service.core import ids
from service.core.assistants import Assistants
from service.core.clock import now
from service.core.errors import InvalidArgument, NotFound
from service.core.limits import MAX_USER_ID
from service.core.models import Message, Page, Thread
from service.core.paging import created, open_cursor
from service.core.ports import MemoryPort, MessageStore, ThreadStore
from service.core.validation import check_metadata, check_text

__all__ = ["Threads"]

log = logging.getLogger(__name__)

_ORDERS = {"": False, "sequence": False, "sequence asc": False, "sequence desc": True}


class Threads:
    """The thread use cases; every call is scoped to one tenant. With
    ``memory``, deleting a thread can delete the memories learnt in it."""

    def __init__(
        self,
        assistants: Assistants,
        threads: ThreadStore,
        messages: MessageStore,
        *,
        memory: MemoryPort | None = None,
    ) -> None:
        self._assistants = assistants
        self._threads = threads
        self._messages = messages
        self._memory = memory

    async def create(
        self, tenant: str, assistant_id: str, user_id: str, metadata: dict[str, str]
    ) -> Thread:
        """Create an empty thread under an assistant (the default one if
        ``assistant_id`` is empty).

        Raises:
            InvalidArgument: malformed id, long user id, bad metadata.
            NotFound: no such assistant.
        """
        check_text(user_id, "user_id", MAX_USER_ID)
        metadata = check_metadata(metadata)
        if assistant_id:
            assistant = await self._assistants.get(tenant, assistant_id)
        else:
            assistant = await self._assistants.default(tenant)
        t = now()
        thread = Thread(
            thread_id=ids.new_id(ids.THREAD),
            tenant=tenant,
            assistant_id=assistant.assistant_id,
            user_id=user_id,
            metadata=metadata,
            create_time=t,
            update_time=t,
        )
        await self._threads.insert(thread)
        # An assistant deleted while this insert ran must not keep an orphan.
        try:
            await self._assistants.get(tenant, assistant.assistant_id)
        except NotFound:
            await self._threads.delete(tenant, thread.thread_id)
            raise
        return thread

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

    async def list(
        self, tenant: str, assistant_id: str, user_id: str, page_size: int, page_token: str
    ) -> Page[Thread]:
        """One page of threads, newest first, optionally filtered.

        Raises:
            InvalidArgument: malformed filter, negative page size, bad token.
        """
        if assistant_id:
            ids.check_id(ids.ASSISTANT, assistant_id, "assistant_id")
        check_text(user_id, "user_id", MAX_USER_ID)
        filters: dict[str, object] = {"list": "threads", "a": assistant_id, "u": user_id}
        cursor = open_cursor(page_size, page_token, filters, "created")
        items = await self._threads.find_page(
            tenant, assistant_id, user_id, cursor.fetch, cursor.after
        )
        return cursor.page(items, lambda t: created(t.create_time, t.thread_id))

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
        if forget and self._memory is not None:
            await self._memory.forget_thread(tenant, assistant_id, thread_id)
        count = await self._messages.delete_thread(tenant, thread_id)
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
                f"order_by {order_by!r} is not supported; use 'sequence' or 'sequence desc'",
                field="order_by",
            )
        descending = _ORDERS[order]
        filters: dict[str, object] = {"list": "messages", "t": thread_id, "d": descending}
        cursor = open_cursor(page_size, page_token, filters, "position")
        await self.get(tenant, thread_id)
        items = await self._messages.find_page(
            tenant, thread_id, cursor.fetch, cursor.after, descending
        )
        return cursor.page(items, lambda m: m.sequence)
