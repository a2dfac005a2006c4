"""Messages that wait for a busy thread's lease instead of being refused
(SendMessage's ``on_busy`` ENQUEUE and INTERRUPT), across replicas.

Each waiter registers a ticket in the lease store beside the thread's
lease: an expiring document its waiter keeps alive while it waits and
removes when it is done (shielded from its caller's cancellation), so a
waiter that dies leaves a ticket that lapses within a lease's lifetime and
is then removed by the next reader of the queue. Tickets count for the
per-thread cap and sort in the order they were taken: INTERRUPT ones
first (they are answered next), then by the replica's clock in
milliseconds and a counter of this process. Only the first live ticket
tries the lease, with a short back-off (woken at once when a lease of this
process is released), so the queued messages of a thread are answered in
the order they were queued: exactly within a replica, and across replicas
as far as their clocks agree. A message that finds the thread free and
nobody queued takes it without a ticket.

INTERRUPT also asks the holder in the way to stop: directly when it is a
lease of this process, and through a flag on the lease document that a
holder on another replica polls for (``Leases``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from service.core.clock import now
from service.core.errors import LoomError, ThreadQueueFull
from service.core.lease_port import REPLY, LeaseState, LeaseStore
from service.core.models import OnBusy
from service.core.shield import Shield

__all__ = ["QUEUE_RETRY_AFTER", "LeaseQueue"]

# Back-off of the first waiter between attempts at the lease (seconds): a
# lease released on another replica is seen within the longest.
_FIRST_DELAY = 0.02
_MAX_DELAY = 0.25
# Suggested to a caller refused for a full queue (seconds).
QUEUE_RETRY_AFTER = 1.0

log = logging.getLogger(__name__)

L = TypeVar("L")
Take = Callable[[str, str, str], Awaitable[tuple[L | None, LeaseState | None]]]

_counter = itertools.count()


class LeaseQueue(Generic[L]):
    """Waits for a thread's lease in the thread's queue (see the module
    docstring). ``take`` makes one attempt at the lease (the lease, or the
    live holder's state); ``ask_local`` interrupts a holder of this process
    by its owner (False if it is not one); ``freed`` is an event set when a
    lease of this process is released."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        ttl: float,
        shield: Shield,
        limit: int,
        take: Take[L],
        ask_local: Callable[[str], bool],
        freed: Callable[[], asyncio.Event],
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._shield = shield
        self._limit = limit
        self._take = take
        self._ask_local = ask_local
        self._freed = freed
        self._stopped: LoomError | None = None

    def stop(self, cause: LoomError) -> None:
        """End every wait of this process with ``cause`` (a shutdown)."""
        self._stopped = cause
        self._freed().set()

    async def take(self, tenant: str, thread_id: str, purpose: str, on_busy: OnBusy) -> L:
        """The thread's lease, once the replies before this message ended.

        Raises:
            ThreadQueueFull: the thread has as many messages waiting as it may.
            LoomError: the wait was stopped (``stop``).
        """
        holder: LeaseState | None = None
        if not await self._store.queued(thread_id, now()):
            lease, holder = await self._take(tenant, thread_id, purpose)
            if lease is not None:
                return lease
        ticket = _ticket(on_busy)
        keeper: asyncio.Task[None] | None = None
        try:
            await self._join(tenant, thread_id, ticket)
            keeper = asyncio.create_task(self._keep(thread_id, ticket), name=f"queue {thread_id}")
            return await self._wait(tenant, thread_id, purpose, ticket, holder)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            await self._shield.run(self._leave(thread_id, ticket))

    async def _wait(
        self, tenant: str, thread_id: str, purpose: str, ticket: str, holder: LeaseState | None
    ) -> L:
        """Try the lease whenever ``ticket`` is first in the queue; with an
        INTERRUPT ticket, ask each holder in the way to stop, once."""
        interrupting = ticket.startswith(_PRIORITY[OnBusy.INTERRUPT])
        asked: set[str] = set()
        delay = _FIRST_DELAY
        while True:
            if interrupting and holder is not None and holder.owner not in asked:
                asked.add(holder.owner)
                await self._ask(thread_id, holder)
            freed = self._freed()
            if self._stopped is not None:
                raise self._stopped
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await freed.wait()
            delay = min(delay * 2, _MAX_DELAY)
            tickets = await self._store.queued(thread_id, now())
            holder = None
            # A ticket that lapsed (this waiter stalled for a lease's
            # lifetime) is not written again: a write still in flight when
            # its waiter is cancelled could land after its removal.
            if min([*tickets, ticket]) != ticket:
                continue
            lease, holder = await self._take(tenant, thread_id, purpose)
            if lease is not None:
                return lease

    async def _join(self, tenant: str, thread_id: str, ticket: str) -> None:
        """Queue ``ticket``, unless as many messages as the cap joined the
        queue before it (in the order of joining, whatever their priority).

        Raises:
            ThreadQueueFull: the queue is full.
        """
        await self._store.join(tenant, thread_id, ticket, self._expiry())
        tickets = await self._store.queued(thread_id, now())
        ahead = sum(1 for t in tickets if t[1:] < ticket[1:])
        if ahead >= self._limit:  # the caller leaves the queue
            raise ThreadQueueFull(thread_id, self._limit, QUEUE_RETRY_AFTER)

    async def _ask(self, thread_id: str, holder: LeaseState) -> None:
        """Ask ``holder`` to stop its reply: a holder of this process at once,
        another through the lease document it polls. A holder that is not
        a reply (a summary being stored, say) is brief: it is waited for."""
        if holder.purpose != REPLY or self._ask_local(holder.owner):
            return
        try:
            await self._store.ask_interrupt(thread_id, holder.owner)
        except Exception:  # the next holder in the way is asked again
            log.warning("could not ask the reply on %s to stop", thread_id, exc_info=True)

    async def _keep(self, thread_id: str, ticket: str) -> None:
        """Keep ``ticket`` alive while its waiter waits."""
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self._store.keep(thread_id, ticket, self._expiry())
            except Exception:  # it has slack; the wait re-queues it if it lapsed
                log.warning("could not keep a queued message on %s", thread_id, exc_info=True)

    async def _leave(self, thread_id: str, ticket: str) -> None:
        """Remove ``ticket``, trying again a few times: one left behind holds
        the messages after it for up to a lease's lifetime."""
        for pause in (0.05, 0.2, None):
            try:
                await self._store.leave(thread_id, ticket)
                return
            except Exception:
                if pause is None:  # it lapses within a lease's lifetime
                    log.warning("could not leave the queue of %s", thread_id, exc_info=True)
                    return
                log.info("leaving the queue of %s failed; trying again", thread_id, exc_info=True)
            await asyncio.sleep(pause)

    def _expiry(self) -> datetime:
        return now() + timedelta(seconds=self._ttl)


_PRIORITY = {OnBusy.INTERRUPT: "0", OnBusy.ENQUEUE: "1"}


def _ticket(on_busy: OnBusy) -> str:
    """A ticket that sorts after the ones this process took before it: the
    priority, the time in milliseconds, a counter, a random tail."""
    millis = int(now().timestamp() * 1000)
    return f"{_PRIORITY[on_busy]}{millis:015d}-{next(_counter) % 10**6:06d}-{secrets.token_hex(4)}"
