"""The tokens spent on a thread: a reply's are added to the thread as it is
saved (under the thread's lease); the model calls of background jobs
(summaries, memory extraction) are metered and charged to the thread they
worked for through the ``Ledger``.

Code that calls a model inside ``metered()`` has its usage added to that
meter by the model client (``record``); calls made outside any meter are not
counted here.

Why not one ``$inc`` on the thread from anywhere: on FerretDB 1.x an update
reads and rewrites the whole document, so two concurrent updates of one
document lose one of them (measured: 100 concurrent increments left 11).
So every counter has one writer at a time: the thread document's is the
holder of the thread's lease, and the jobs' (which run while replies do)
is whoever holds a brief lease on the thread's usage document. Summing the
messages and jobs instead would make every GetThread read them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from service.core.leases import BRIEF, Leases
from service.core.models import Usage
from service.core.ports import ThreadStore

__all__ = ["Ledger", "Meter", "metered", "record"]


@dataclass(slots=True)
class Meter:
    """Tokens counted so far."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens)

    def __bool__(self) -> bool:
        return bool(self.input_tokens or self.output_tokens)


_current: ContextVar[Meter | None] = ContextVar("loom_usage_meter", default=None)


@contextlib.contextmanager
def metered() -> Iterator[Meter]:
    """Count the usage of the model calls made in the body (in this task and
    the tasks it starts) on a new meter."""
    meter = Meter()
    token = _current.set(meter)
    try:
        yield meter
    finally:
        _current.reset(token)


def record(usage: Usage) -> None:
    """Add one model call's usage to the current meter, if there is one."""
    meter = _current.get()
    if meter is not None:
        meter.input_tokens += usage.input_tokens
        meter.output_tokens += usage.output_tokens


class Ledger:
    """Charges the tokens background jobs spend to their threads."""

    def __init__(self, leases: Leases, threads: ThreadStore) -> None:
        self._leases = leases
        self._threads = threads

    async def charge(self, tenant: str, thread_id: str, usage: Usage) -> None:
        """Add ``usage`` to the thread's job totals, one writer at a time
        (others wait for a moment, then give up).

        Raises:
            ThreadBusy: other charges held the thread's usage too long.
        """
        async with self._leases.hold(tenant, f"usage/{thread_id}", BRIEF):
            await self._threads.add_usage(tenant, thread_id, usage)
