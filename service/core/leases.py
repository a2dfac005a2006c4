"""Leases stored in the database: one reply in flight per thread, one runner
per background job, across replicas; each with an epoch and a "lost" signal
so that a holder can stop writing the moment another may have taken over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType

from service.core.clock import now
from service.core.errors import (
    LeaseLost,
    LeaseUnconfirmed,
    LoomError,
    ReplyInterrupted,
    ThreadBusy,
)
from service.core.lease_port import BRIEF, JOB, REPLY, LeaseOutcome, LeaseState, LeaseStore
from service.core.lease_queue import LeaseQueue
from service.core.models import OnBusy
from service.core.shield import Shield

__all__ = ["BRIEF", "BRIEF_WAIT", "JOB", "REPLY", "Lease", "Leases"]

BRIEF_WAIT = 2.0
# How often this process looks for a newer message's request to stop one of
# its replies (seconds): the bound on how long an interrupt from another
# replica takes. One read covers every reply held here.
INTERRUPT_POLL = 0.5
INTERRUPT_BATCH = 500  # thread ids per read

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class Lease:
    """A held lease.

    ``stale`` is the state of the dead holder it replaced, if any. ``epoch``
    grows along every chain of takeovers (see ``LeaseStore``): a write
    fenced on it is refused once a newer holder exists. ``lost`` is set as
    soon as a renewal finds the lease gone or taken (``cause`` is then
    ``LeaseLost``), or cannot confirm it before it expires
    (``LeaseUnconfirmed``); from then on the holder must write nothing more
    (``check`` raises the cause). ``interrupt`` stops the holder's work
    without losing the lease (a server shutting down): the holder may still
    write its final state. ``handed_off`` says a write left for later
    (``service.core.reply.late``) will release the lease, not its ``hold``.
    """

    thread_id: str
    owner: str
    stale: LeaseState | None
    epoch: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    cause: LoomError | None = None
    stopped: LoomError | None = None
    handed_off: bool = False
    ending: bool = False  # its holder is writing its final state, then releases it
    purpose: str = REPLY
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)
    _timeout: asyncio.Timeout | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise ``cause`` (``LeaseLost`` or ``LeaseUnconfirmed``) if the
        lease is no longer surely held."""
        if self.lost.is_set():
            raise self.cause or LeaseLost(self.thread_id)

    def lose(self, cause: LoomError) -> None:
        """Mark the lease lost for ``cause`` and interrupt the holder's work."""
        if not self.lost.is_set():
            self.cause = cause
            self.lost.set()
        self.interrupt(cause)

    def interrupt(self, cause: LoomError) -> None:
        """Stop the holder's interruptible work (``interruptible``) with
        ``cause``, now if it is waiting, else at its next one."""
        if self.stopped is None:
            self.stopped = cause
        if self._timeout is not None and self._timeout.when() is None:
            self._timeout.reschedule(0)  # in the past: fires at once

    def interruptible(self) -> _Interruptible:
        """``async with lease.interruptible():`` runs its body (one wait, such
        as the model's next chunk) unless the lease is lost or the work
        interrupted, and cuts the wait short when that happens meanwhile,
        raising the cause instead."""
        return _Interruptible(self)


class _Interruptible:
    """See ``Lease.interruptible``; a timeout with no deadline that losing or
    interrupting the lease makes fire."""

    __slots__ = ("_lease", "_timeout")

    def __init__(self, lease: Lease) -> None:
        self._lease = lease
        self._timeout = asyncio.timeout(None)

    async def __aenter__(self) -> None:
        lease = self._lease
        lease.check()
        if lease.stopped is not None:
            raise lease.stopped
        await self._timeout.__aenter__()
        lease._timeout = self._timeout

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lease = self._lease
        lease._timeout = None
        try:
            await self._timeout.__aexit__(kind, exc, tb)
        except TimeoutError:
            if lease.stopped is not None:
                raise lease.stopped from None
            raise


class Leases:
    """Takes, renews and releases leases stored in the database.

    A lease lasts ``ttl`` seconds and is renewed every ``ttl / 3`` while its
    holder runs, so a holder that dies frees the thread within ``ttl``.
    The leases held through this object are known, so that shutdown can
    interrupt their holders (``interrupt``).
    """

    def __init__(self, store: LeaseStore, ttl: float, shield: Shield, max_queued: int = 8) -> None:
        self._store = store
        self._ttl = ttl
        self._shield = shield
        self._held: set[Lease] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._watch_sleeping = False
        self._freed = asyncio.Event()
        self._queue: LeaseQueue[Lease] = LeaseQueue(
            store,
            ttl=ttl,
            shield=shield,
            limit=max_queued,
            take=self._take,
            ask_local=self._ask_local,
            freed=lambda: self._freed,
        )

    @contextlib.asynccontextmanager
    async def hold(
        self,
        tenant: str,
        thread_id: str,
        purpose: str = REPLY,
        on_busy: OnBusy = OnBusy.REJECT,
    ) -> AsyncIterator[Lease]:
        """Hold the thread's lease for the body of the ``async with``. A
        holder that only needs the thread for a moment (a summary being
        stored, or a reply of this process writing its end: its caller may
        have seen it stored already) is waited for, up to ``BRIEF_WAIT``
        seconds. With ``on_busy`` ENQUEUE or INTERRUPT, any holder is
        waited for in the thread's queue (``LeaseQueue``), for as long as
        the caller waits.

        Raises:
            ThreadBusy: another live holder has it (REJECT).
            ThreadQueueFull: the thread's queue is full (ENQUEUE, INTERRUPT).
        """
        if on_busy is OnBusy.REJECT:
            lease = await self._take_or_refuse(tenant, thread_id, purpose)
        else:
            lease = await self._queue.take(tenant, thread_id, purpose, on_busy)
        try:
            yield lease
        finally:
            if lease.handed_off:  # a late write releases it once it is done
                await self._stop_renewing(lease)
            else:
                await self.release(lease)

    async def _take_or_refuse(self, tenant: str, thread_id: str, purpose: str) -> Lease:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BRIEF_WAIT
        while True:
            lease, holder = await self._take(tenant, thread_id, purpose)
            if lease is not None:
                return lease
            brief = holder is not None and (holder.purpose == BRIEF or self._ending(holder.owner))
            if not brief or loop.time() > deadline:
                raise ThreadBusy(thread_id)
            await asyncio.sleep(0.02)

    async def claim(self, tenant: str, key: str, purpose: str = JOB) -> Lease | None:
        """Take the lease named ``key`` if it is free (or its holder died),
        without waiting; None if it is held. The caller must ``release`` it."""
        lease, _ = await self._take(tenant, key, purpose)
        return lease

    async def release(self, lease: Lease) -> None:
        """Stop renewing ``lease`` and delete it (the write is shielded from
        the caller's cancellation). A delete that fails is logged: the lease
        then lapses within its lifetime."""
        await self._stop_renewing(lease)
        try:
            await self._shield.run(self._store.release(lease.thread_id, lease.owner))
        except Exception:
            log.warning("could not release the lease on %s", lease.thread_id, exc_info=True)
        # Wake this process's queued messages: the lease is free now.
        self._freed.set()
        self._freed = asyncio.Event()

    async def _stop_renewing(self, lease: Lease) -> None:
        self._held.discard(lease)
        if self._watcher is not None and self._watch_sleeping and not self._replies():
            self._watcher.cancel()  # asleep: nothing half-read is cut
        if lease._renewer is not None:
            lease._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease._renewer
            lease._renewer = None

    async def advance(self, lease: Lease, epoch: int) -> bool:
        """Raise ``lease``'s epoch to ``epoch`` (to pass a fence its
        predecessor, whose clock ran ahead, left); False if it is no longer
        held."""
        if not await self._store.set_epoch(lease.thread_id, lease.owner, epoch):
            return False
        lease.epoch = epoch
        return True

    async def reconfirm(self, lease: Lease) -> bool:
        """Extend ``lease`` again after its holder could not renew it (the
        database was unreachable); False if another holder has it now.

        Raises:
            Exception: the store's, when the database is still unreachable.
        """
        return await self._store.renew(
            lease.thread_id, lease.owner, now() + timedelta(seconds=self._ttl)
        )

    def interrupt(self, cause: LoomError, purpose: str = REPLY) -> int:
        """Interrupt the work of every lease of ``purpose`` held here (see
        ``Lease.interrupt``); return how many."""
        held = [lease for lease in self._held if lease.purpose == purpose]
        for lease in held:
            lease.interrupt(cause)
        if purpose == REPLY:
            self._queue.stop(cause)
        return len(held)

    def _ask_local(self, owner: str) -> bool:
        """Interrupt the reply of this process holding lease ``owner`` for a
        newer message; False if no lease of this process is ``owner``."""
        for lease in self._held:
            if lease.owner == owner:
                lease.interrupt(ReplyInterrupted(lease.thread_id))
                return True
        return False

    def _ending(self, owner: str) -> bool:
        """Whether ``owner`` is a lease of this process whose holder is
        writing its final state."""
        return any(lease.owner == owner and lease.ending for lease in self._held)

    async def state(self, thread_id: str) -> LeaseState | None:
        """The lease on the thread as stored (live or expired), if any."""
        return await self._store.current(thread_id)

    async def waiting(self, thread_id: str) -> bool:
        """True while messages wait in the thread's queue (``LeaseQueue``)."""
        return bool(await self._store.queued(thread_id, now()))

    async def expired(self, thread_id: str) -> bool:
        """True when nobody holds a live lease on the thread."""
        state = await self._store.current(thread_id)
        return state is None or state.expires < now()

    async def _take(
        self, tenant: str, key: str, purpose: str
    ) -> tuple[Lease | None, LeaseState | None]:
        """One attempt: the lease (renewed from now on), or the live holder."""
        owner = secrets.token_hex(8)
        t = now()
        expires = t + timedelta(seconds=self._ttl)
        grant = await self._store.acquire(tenant, key, owner, expires, t, purpose)
        if grant.outcome is LeaseOutcome.BUSY:
            return None, grant.other
        stale = grant.other if grant.outcome is LeaseOutcome.TAKEN_OVER else None
        if stale is not None:
            log.warning("took over the expired lease on %s", key)
        lease = Lease(key, owner, stale, grant.epoch, purpose=purpose)
        lease._renewer = asyncio.create_task(self._renew(lease, expires), name=f"lease {key}")
        self._held.add(lease)
        if purpose == REPLY and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch_interrupts(), name="reply interrupts")
        return lease, None

    async def _renew(self, lease: Lease, held_until: datetime) -> None:
        while True:
            # Renew early enough that one failed attempt still leaves time
            # for another before the lease runs out.
            await asyncio.sleep(self._ttl / 3)
            renewed_until = now() + timedelta(seconds=self._ttl)
            try:
                kept = await self._store.renew(lease.thread_id, lease.owner, renewed_until)
            except Exception:  # the next renewal may succeed; the lease has slack
                log.warning("could not renew the lease on %s", lease.thread_id, exc_info=True)
                if now() + timedelta(seconds=self._ttl / 3) < held_until:
                    continue
                # It may lapse before the next attempt: another replica could
                # then take it, so this holder must stop now.
                log.warning("could not confirm the lease on %s in time", lease.thread_id)
                lease.lose(LeaseUnconfirmed(lease.thread_id))
                return
            if not kept:
                log.warning("lost the lease on %s", lease.thread_id)
                lease.lose(LeaseLost(lease.thread_id))
                return
            held_until = renewed_until

    def _replies(self) -> dict[tuple[str, str], Lease]:
        """The reply leases held here whose work still runs, by thread and owner."""
        return {
            (lease.thread_id, lease.owner): lease
            for lease in self._held
            if lease.purpose == REPLY and lease.stopped is None
        }

    async def _watch_interrupts(self) -> None:
        """Interrupt the replies held here that a newer message asked to stop
        (from another replica: ``LeaseQueue``): one read every
        ``INTERRUPT_POLL`` seconds for all of them, not one per reply; ends
        when none is held (the next reply lease starts it again)."""
        while self._replies():
            self._watch_sleeping = True
            try:
                await asyncio.sleep(INTERRUPT_POLL)
            finally:
                self._watch_sleeping = False
            replies = self._replies()
            ids = list(dict.fromkeys(thread_id for thread_id, _ in replies))
            for start in range(0, len(ids), INTERRUPT_BATCH):
                try:
                    asked = await self._store.interrupts_asked(ids[start : start + INTERRUPT_BATCH])
                except Exception:  # a renewal tells whether the database is away
                    log.debug("could not look for interrupts", exc_info=True)
                    break
                for pair in asked:
                    if (lease := replies.get(pair)) is not None:
                        lease.interrupt(ReplyInterrupted(lease.thread_id))
