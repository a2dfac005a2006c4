"""Taking a thread's lease for a reply, and recovering a reply cut off by a
crash or an outage.

Under the lease, the holder first claims the thread (``ThreadClaim``):
that fences out every earlier holder and reads the thread as it stands, so
a prompt is built from the thread as it is under the lease. A thread whose
earlier holder started a reply and never wrote its end
(``Thread.replying``: it died, or lost the database and was taken over),
or whose lease was taken over from a holder that died, is settled before
anything else: its unfinished reply is marked INCOMPLETE with what it
saved, and the thread's context and count are rebuilt from the messages
themselves (the holder may have died between writes). A batch of appended
messages its writer did not finish (AddMessages) is rolled back first,
whoever takes the lease next.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from service.core.clock import now
from service.core.errors import DatabaseUnavailable, LeaseLost, NotFound, ThreadBusy
from service.core.leases import BRIEF, REPLY, Lease
from service.core.models import ContextEntry, MessageStatus, OnBusy, Thread
from service.core.reply.collaborators import ReplyPolicy, ReplyServices, ReplyStores
from service.core.reply.late import LateWrites
from service.core.reply.writes import ThreadWrites

__all__ = ["Recovery"]

_CLAIM_ROUNDS = 3


class Recovery:
    """Holds thread leases for replies and settles what earlier holders left."""

    def __init__(
        self, stores: ReplyStores, services: ReplyServices, policy: ReplyPolicy, late: LateWrites
    ) -> None:
        self._stores = stores
        self._counter = services.counter
        self._context_chars = policy.context_chars
        self._lease_ttl = policy.lease_ttl
        self._late = late

    @contextlib.asynccontextmanager
    async def hold(
        self, tenant: str, thread_id: str, purpose: str = REPLY, on_busy: OnBusy = OnBusy.REJECT
    ) -> AsyncIterator[ThreadWrites]:
        """Hold the thread's lease for the body of the ``async with`` and give
        the writes made under it, after this replica's late write on the
        thread, if any, the recovery of an unfinished reply, and the roll
        back of an unfinished batch. A ``BRIEF`` hold is waited for by the
        next holder instead of refused, and any hold by one that sends
        ``on_busy`` ENQUEUE or INTERRUPT (see ``Leases.hold``).

        Raises:
            ThreadBusy: another live holder has the lease.
            ThreadQueueFull: too many messages wait for the thread.
            NotFound: no such thread.
            LeaseLost: a newer holder claimed the thread meanwhile.
        """
        await self._late.wait(thread_id, self._lease_ttl)
        async with self._stores.leases.hold(tenant, thread_id, purpose, on_busy) as lease:
            thread = await self._claim(tenant, thread_id, lease)
            writes = ThreadWrites(
                messages=self._stores.messages,
                threads=self._stores.thread_store,
                counter=self._counter,
                context_chars=self._context_chars,
                thread=thread,
                lease=lease,
                translate=self._stores.translate,
            )
            if thread.replying or lease.stale is not None or thread.open_batch is not None:
                await self._settle(tenant, writes)
            try:
                yield writes
            finally:
                await self._stores.shield.run(writes.end_claim())

    async def sweep(self, limit: int = 100) -> int:
        """Settle replies whose holder died mid-reply on threads nobody took
        since (``Thread.replying``, and no lease, or one expired a lease's
        lifetime ago: a late write of a holder that lost the database
        reconfirms its lapsed lease first); return how many threads.

        The sweep may read a thread as replying just before its reply ends
        and releases it, then take the free lease: so it holds it as BRIEF,
        and the caller's next message, sent as soon as it read
        ``completed`` (possibly to another replica), waits for it instead
        of being refused THREAD_BUSY."""
        settled = 0
        for tenant, thread_id in await self._stores.thread_store.unfinished(limit):
            held = await self._stores.leases.state(thread_id)
            if held is not None and held.expires > now() - timedelta(seconds=self._lease_ttl):
                continue  # running, or its holder may still write its end
            try:
                async with self.hold(tenant, thread_id, BRIEF):
                    settled += 1
            except (ThreadBusy, NotFound, LeaseLost, DatabaseUnavailable):
                continue  # taken meanwhile, gone, or the database is away: next sweep
        return settled

    async def _claim(self, tenant: str, thread_id: str, lease: Lease) -> Thread:
        """The thread as this holder claimed it. A claim refused for a larger
        epoch while this holder still has the lease means the holder before
        it ran on a clock ahead of this one's: the lease's epoch is raised
        past it and the claim tried again."""
        for _ in range(_CLAIM_ROUNDS):
            claimed = await self._stores.thread_store.claim(tenant, thread_id, lease.epoch)
            if claimed.thread is not None:
                claimed.thread.fence = lease.epoch
                return claimed.thread
            if not claimed.fence:
                raise NotFound("thread", thread_id)
            if not await self._stores.leases.advance(lease, claimed.fence + 1):
                break
        raise LeaseLost(thread_id)

    async def _settle(self, tenant: str, writes: ThreadWrites) -> None:
        """Roll back an unfinished batch, mark an earlier holder's unfinished
        reply INCOMPLETE and rebuild the thread's context and count from the
        messages."""
        await writes.roll_back(tenant)
        history = await self._stores.messages.history(tenant, writes.thread.thread_id, 2**62)
        entries: list[ContextEntry] = []
        for message in history:
            settled = message
            if message.status is MessageStatus.IN_PROGRESS:
                settled = await writes.finish(
                    message.message_id,
                    content=message.content,
                    status=MessageStatus.INCOMPLETE,
                    error="interrupted",
                )
            entries.append(settled.entry())
        await writes.rebuild(entries, history[-1].sequence + 1 if history else 0)
