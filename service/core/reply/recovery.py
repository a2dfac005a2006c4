"""Taking a thread's lease for a reply, and recovering a reply cut off by a
crash: when the lease is taken over from a holder that died, its unfinished
reply is settled INCOMPLETE and the thread's context and count are rebuilt
from the messages themselves (the holder may have died between writes). A
batch of appended messages its writer did not finish (AddMessages) is
rolled back first, whoever takes the lease next."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from service.core.models import ContextEntry, MessageStatus, Thread
from service.core.reply.collaborators import ReplyPolicy, ReplyServices, ReplyStores
from service.core.reply.writes import ThreadWrites

__all__ = ["Recovery"]


class Recovery:
    """Holds thread leases for replies and settles what dead holders left."""

    def __init__(self, stores: ReplyStores, services: ReplyServices, policy: ReplyPolicy) -> None:
        self._stores = stores
        self._counter = services.counter
        self._context_chars = policy.context_chars

    @contextlib.asynccontextmanager
    async def hold(
        self, tenant: str, thread_id: str, thread: Thread | None = None
    ) -> AsyncIterator[ThreadWrites]:
        """Hold the thread's lease for the body of the ``async with`` and give
        the writes made under it. ``thread`` is a thread the caller has just
        created (nobody else can have written it); any other is read under
        the lease. A dead holder's reply is settled first, and an unfinished
        batch rolled back.

        Raises:
            ThreadBusy: another live holder has the lease.
            NotFound: no such thread.
        """
        async with self._stores.leases.hold(tenant, thread_id) as lease:
            if thread is None:
                thread = await self._stores.threads.get(tenant, thread_id)
            writes = ThreadWrites(
                messages=self._stores.messages,
                threads=self._stores.thread_store,
                counter=self._counter,
                context_chars=self._context_chars,
                thread=thread,
                lease=lease,
            )
            if lease.stale is not None or thread.open_batch is not None:
                await self._settle(tenant, writes)
            yield writes

    async def _settle(self, tenant: str, writes: ThreadWrites) -> None:
        """After taking over a dead holder's lease: mark its unfinished reply
        INCOMPLETE and rebuild the thread's context and count from the
        messages."""
        await writes.roll_back(tenant)
        history = await self._stores.messages.history(tenant, writes.thread.thread_id, 2**62)
        entries: list[ContextEntry] = []
        for message in history:
            settled = message
            if message.status is MessageStatus.IN_PROGRESS:
                settled = (
                    await writes.finish(
                        message.message_id,
                        content=message.content,
                        status=MessageStatus.INCOMPLETE,
                        error="interrupted",
                    )
                    or message
                )
            entries.append(settled.entry())
        await writes.rebuild(entries, history[-1].sequence + 1 if history else 0)
