"""Writes that must finish even when the caller goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Shield"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Shield:
    """Runs clean-up writes (a reply's final state, a lease release) so that a
    cancelled caller cannot interrupt them, and lets shutdown wait for them
    before closing the database client."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[Any]] = set()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` to completion even if the awaiting task is cancelled."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` in a task of its own, which ``drain`` waits for;
        nobody need await it (its failure is logged)."""
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._spawned_done)
        return task

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("background write failed", exc_info=exc)

    async def drain(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 - a bound, not a deadline
        """Wait (up to ``timeout`` seconds) for shielded writes still running."""
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=timeout)
            if late:
                log.warning("%d clean-up writes did not finish before shutdown", len(late))
