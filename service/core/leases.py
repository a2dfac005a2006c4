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

from service.core.clock import now
from service.core.errors import LeaseLost, ThreadBusy
from service.core.ports import LeaseOutcome, LeaseState, LeaseStore
from service.core.shield import Shield

__all__ = ["BRIEF", "BRIEF_WAIT", "JOB", "REPLY", "Lease", "Leases"]

REPLY = "reply"
BRIEF = "brief"  # held for a few writes only; others wait instead of failing
JOB = "job"
BRIEF_WAIT = 2.0

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Lease:
    """A held lease.

    ``stale`` is the state of the dead holder it replaced, if any, so the new
    holder can settle that holder's half-written work. ``epoch`` grows along
    every chain of takeovers (see ``LeaseStore``): a write fenced on it is
    refused once a newer holder exists. ``lost`` is set as soon as a renewal
    finds the lease gone or taken, or cannot confirm it before it expires;
    from then on the holder must write nothing more (``check`` raises).
    """

    thread_id: str
    owner: str
    stale: LeaseState | None
    epoch: int = 0
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    _renewer: asyncio.Task[None] | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is no longer surely held."""
        if self.lost.is_set():
            raise LeaseLost(self.thread_id)


class Leases:
    """Takes, renews and releases leases stored in the database.

    A lease lasts ``ttl`` seconds and is renewed every ``ttl / 3`` while its
    holder runs, so a holder that dies frees the thread within ``ttl``.
    """

    def __init__(self, store: LeaseStore, ttl: float, shield: Shield) -> None:
        self._store = store
        self._ttl = ttl
        self._shield = shield

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, thread_id: str, purpose: str = REPLY) -> AsyncIterator[Lease]:
        """Hold the thread's lease for the body of the ``async with``. A
        holder that only needs the thread for a moment (a summary being
        stored) is waited for, up to ``BRIEF_WAIT`` seconds.

        Raises:
            ThreadBusy: another live holder has it.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BRIEF_WAIT
        while True:
            lease, holder = await self._take(tenant, thread_id, purpose)
            if lease is not None:
                break
            if holder is None or holder.purpose != BRIEF or loop.time() > deadline:
                raise ThreadBusy(thread_id)
            await asyncio.sleep(0.02)
        try:
            yield lease
        finally:
            await self.release(lease)

    async def claim(self, tenant: str, key: str, purpose: str = JOB) -> Lease | None:
        """Take the lease named ``key`` if it is free (or its holder died),
        without waiting; None if it is held. The caller must ``release`` it."""
        lease, _ = await self._take(tenant, key, purpose)
        return lease

    async def release(self, lease: Lease) -> None:
        """Stop renewing ``lease`` and delete it (the write is shielded from
        the caller's cancellation)."""
        if lease._renewer is not None:
            lease._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease._renewer
        await self._shield.run(self._store.release(lease.thread_id, lease.owner))

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
        lease = Lease(key, owner, stale, grant.epoch)
        lease._renewer = asyncio.create_task(self._renew(lease, expires), name=f"lease {key}")
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
                kept = False
            if not kept:
                log.warning("lost the lease on %s", lease.thread_id)
                lease.lost.set()
                return
            held_until = renewed_until
