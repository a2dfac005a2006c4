"""The per-thread reply lease: one reply in flight per thread, across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from service.core.clock import now
from service.core.errors import ThreadBusy
from service.core.ports import LeaseOutcome, LeaseState, LeaseStore
from service.core.shield import Shield

__all__ = ["BRIEF", "BRIEF_WAIT", "REPLY", "Lease", "Leases"]

REPLY = "reply"
BRIEF = "brief"  # held for a few writes only; others wait instead of failing
BRIEF_WAIT = 2.0

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Lease:
    """A held lease. ``stale`` is the state of the dead holder it replaced, if
    any, so the new holder can settle that holder's half-written reply."""

    thread_id: str
    owner: str
    stale: LeaseState | None


class Leases:
    """Takes, renews and releases thread leases stored in the database.

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
        owner = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BRIEF_WAIT
        while True:
            t = now()
            outcome, state = await self._store.acquire(
                tenant, thread_id, owner, t + timedelta(seconds=self._ttl), t, purpose
            )
            if outcome is not LeaseOutcome.BUSY:
                break
            if state is None or state.purpose != BRIEF or loop.time() > deadline:
                raise ThreadBusy(thread_id)
            await asyncio.sleep(0.02)
        stale = state if outcome is LeaseOutcome.TAKEN_OVER else None
        if outcome is LeaseOutcome.TAKEN_OVER:
            log.warning("took over the expired lease on %s", thread_id)
        renewer = asyncio.create_task(self._renew(thread_id, owner))
        try:
            yield Lease(thread_id, owner, stale)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._shield.run(self._store.release(thread_id, owner))

    async def expired(self, thread_id: str) -> bool:
        """True when nobody holds a live lease on the thread."""
        state = await self._store.current(thread_id)
        return state is None or state.expires < now()

    async def _renew(self, thread_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                kept = await self._store.renew(
                    thread_id, owner, now() + timedelta(seconds=self._ttl)
                )
            except Exception:  # the next renewal may succeed; the lease has slack
                log.warning("could not renew the lease on %s", thread_id, exc_info=True)
                continue
            if not kept:
                log.warning("lost the lease on %s", thread_id)
                return
