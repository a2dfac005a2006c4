"""The per-thread reply lease: one reply in flight per thread, across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta

from service.core.clock import now
from service.core.errors import NotFound, ThreadBusy
from service.core.ports import LeaseOutcome, MessageStore, ThreadStore
from service.core.shield import Shield

__all__ = ["Leases"]

log = logging.getLogger(__name__)


class Leases:
    """Takes, renews and releases thread leases stored in the database.

    A lease lasts ``ttl`` seconds and is renewed every ``ttl / 3`` while its
    holder runs, so a holder that dies frees the thread within ``ttl``. Whoever
    takes over an expired lease first marks the dead holder's half-written
    reply INCOMPLETE.
    """

    def __init__(
        self, threads: ThreadStore, messages: MessageStore, ttl: float, shield: Shield
    ) -> None:
        self._shield = shield
        self._threads = threads
        self._messages = messages
        self._ttl = ttl

    @contextlib.asynccontextmanager
    async def hold(self, tenant: str, thread_id: str) -> AsyncIterator[None]:
        """Hold the thread's lease for the body of the ``async with``.

        Raises:
            ThreadBusy: another live holder has it.
            NotFound: the thread does not exist.
        """
        owner = secrets.token_hex(8)
        t = now()
        outcome = await self._threads.acquire_lease(
            tenant, thread_id, owner, t + timedelta(seconds=self._ttl), t
        )
        if outcome is LeaseOutcome.BUSY:
            raise ThreadBusy(thread_id)
        if outcome is LeaseOutcome.MISSING:
            raise NotFound("thread", thread_id)
        if outcome is LeaseOutcome.TAKEN_OVER:
            stale = await self._messages.mark_stale(tenant, thread_id)
            log.warning("took over an expired lease on %s (%d stale replies)", thread_id, stale)
        renewer = asyncio.create_task(self._renew(tenant, thread_id, owner))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await self._shield.run(self._threads.release_lease(tenant, thread_id, owner))

    async def _renew(self, tenant: str, thread_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                kept = await self._threads.renew_lease(
                    tenant, thread_id, owner, now() + timedelta(seconds=self._ttl)
                )
            except Exception:  # the next renewal may succeed; the lease has slack
                log.warning("could not renew the lease on %s", thread_id, exc_info=True)
                continue
            if not kept:
                log.warning("lost the lease on %s", thread_id)
                return
