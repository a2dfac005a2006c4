"""The port of the lease store, which ``service.store.leases`` implements
over MongoDB, and the records it returns (see ``service.core.leases``)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["BRIEF", "JOB", "REPLY", "LeaseGrant", "LeaseOutcome", "LeaseState", "LeaseStore"]

# What a lease is held for (``LeaseState.purpose``).
REPLY = "reply"
BRIEF = "brief"  # held for a few writes only; others wait instead of failing
JOB = "job"


class LeaseOutcome(enum.Enum):
    """Result of trying to take a thread's reply lease."""

    ACQUIRED = "acquired"
    TAKEN_OVER = "taken_over"  # the previous holder's lease had expired
    BUSY = "busy"


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as stored: who holds it, until when, why, and its epoch."""

    owner: str
    expires: datetime
    purpose: str = ""
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """What ``LeaseStore.acquire`` did: with ACQUIRED or TAKEN_OVER, ``epoch``
    is the new holder's; ``other`` is the dead holder's state (TAKEN_OVER)
    or the live holder's (BUSY, None when unknown)."""

    outcome: LeaseOutcome
    epoch: int = 0
    other: LeaseState | None = None


class LeaseStore(Protocol):
    """One lease document per busy thread (or running job), created by a
    unique insert (the one write that is atomic on MongoDB and FerretDB
    alike) and deleted on release, so the collection only ever holds the
    work in flight.

    Epochs: a lease taken fresh gets the acquisition time in milliseconds; a
    takeover gets at least the dead holder's epoch plus one. So epochs only
    grow along a chain of takeovers, and (as long as replicas' clocks agree
    to within a lease's lifetime, which expiry already assumes) across
    releases too: a fencing check can trust a larger epoch to be newer."""

    async def acquire(
        self,
        tenant: str,
        thread_id: str,
        owner: str,
        expires: datetime,
        now: datetime,
        purpose: str = "",
    ) -> LeaseGrant:
        """Take the lease, or take over an expired one; never leaves the
        thread blocked for longer than a lease's lifetime if the caller dies
        part-way."""

    async def renew(self, thread_id: str, owner: str, expires: datetime) -> bool:
        """Extend ``owner``'s lease; False if it no longer holds it."""

    async def set_epoch(self, thread_id: str, owner: str, epoch: int) -> bool:
        """Give ``owner``'s lease a larger epoch (a fence a holder with a
        slower clock than its predecessor's must pass); False if it no
        longer holds it."""

    async def release(self, thread_id: str, owner: str) -> None: ...
    async def current(self, thread_id: str) -> LeaseState | None: ...

    async def ask_interrupt(self, thread_id: str, owner: str) -> bool:
        """Flag ``owner``'s lease as asked to stop its work (a newer message
        interrupts the reply); False if it no longer holds it."""

    async def interrupts_asked(self, thread_ids: Sequence[str]) -> list[tuple[str, str]]:
        """The (thread id, owner) of those threads' leases flagged by
        ``ask_interrupt``."""

    # The queue of a thread's waiting messages: one expiring document per
    # waiter (its ticket), beside the lease, so that a waiter that dies
    # leaves nothing behind once its ticket expires.

    async def join(self, tenant: str, thread_id: str, ticket: str, expires: datetime) -> None:
        """Add ``ticket`` to the thread's queue; tickets sort as strings."""

    async def keep(self, thread_id: str, ticket: str, expires: datetime) -> bool:
        """Extend ``ticket``; False if it is no longer queued."""

    async def leave(self, thread_id: str, ticket: str) -> None:
        """Remove ``ticket`` from the thread's queue."""

    async def queued(self, thread_id: str, now: datetime) -> list[str]:
        """The thread's live tickets, in order; expired ones are removed."""
