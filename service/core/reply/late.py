"""Final writes of replies whose database went away mid-reply, made once it
is back: the reply is stored with what its caller received.

When the database stops answering, a reply cannot write its end, and its
lease cannot be renewed either (nobody else can take it meanwhile: they
need the database too). Rather than leave its text to the last progress
save, the replica keeps what the caller received and retries, with capped
back-off for up to ``retry_for`` seconds: it confirms the lease again (if
another replica has taken the thread over, that one settles the reply and
this one gives up), writes the reply's final state and the thread, both
fenced on the lease's epoch as every write is, then releases the lease. A
new reply on the same thread in this replica waits for that first
(``wait``), so the thread is usable as soon as the database is back.
"""

from __future__ import annotations

import asyncio
import logging

from service.core.errors import LeaseLost, NotFound
from service.core.leases import Leases
from service.core.reply.writes import Ending, ReplyWriter
from service.core.shield import Shield

__all__ = ["LateWrites"]

log = logging.getLogger(__name__)

_FIRST_DELAY = 0.2
_MAX_DELAY = 2.0


class LateWrites:
    """The late final writes of one replica, by thread."""

    def __init__(self, leases: Leases, shield: Shield, *, retry_for: float = 300.0) -> None:
        self._leases = leases
        self._shield = shield
        self._retry_for = retry_for
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def hand_off(self, writer: ReplyWriter, ending: Ending) -> None:
        """Store ``writer``'s reply as ``ending`` once the database answers;
        the lease is released then (not when its ``hold`` ends)."""
        writes = writer.writes
        writes.lease.handed_off = True
        thread_id = writes.thread.thread_id
        log.warning(
            "the database did not take reply %s; storing it %s when it is back",
            writer.reply.message_id,
            ending.status.value,
        )
        task = self._shield.spawn(self._write(writer, ending))
        self._tasks[thread_id] = task
        task.add_done_callback(lambda done: self._forget(thread_id, done))

    def _forget(self, thread_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(thread_id) is task:
            del self._tasks[thread_id]

    async def wait(self, thread_id: str, timeout: float) -> None:  # noqa: ASYNC109 - a bound
        """Wait (up to ``timeout`` seconds) for a late write on the thread."""
        task = self._tasks.get(thread_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    async def _write(self, writer: ReplyWriter, ending: Ending) -> None:
        writes = writer.writes
        lease = writes.lease
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._retry_for
        delay = _FIRST_DELAY
        try:
            while True:
                try:
                    if not await self._leases.reconfirm(lease):
                        log.warning(
                            "reply %s: thread taken over meanwhile", writer.reply.message_id
                        )
                        return
                    writes.checked = False  # confirmed again; the store's fence still holds
                    await writer.settle(ending)
                    log.info("stored reply %s late", writer.reply.message_id)
                    return
                except (LeaseLost, NotFound) as exc:
                    log.warning("reply %s not stored: %s", writer.reply.message_id, exc.message)
                    return
                except Exception:  # noqa: BLE001 - the database is still away: try again
                    if loop.time() + delay > give_up:
                        log.warning("gave up storing reply %s", writer.reply.message_id)
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _MAX_DELAY)
        finally:
            await self._leases.release(lease)
