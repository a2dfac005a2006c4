"""The gRPC health service follows the database: NOT_SERVING while it cannot
be reached, SERVING again once it answers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health, health_pb2

__all__ = ["DatabaseHealth"]

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DatabaseHealth:
    """Pings the database every ``interval`` seconds and sets every name in
    ``services`` ("" for the server as a whole) on the health servicer to
    match. A ping that raises or takes longer than ``timeout`` counts as
    unreachable; the first change in either direction is logged."""

    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        ping: Callable[[], Awaitable[None]],
        services: Sequence[str],
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
    ) -> None:
        self._servicer = servicer
        self._ping = ping
        self._services = tuple(services)
        self._interval = interval
        self._timeout = timeout
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool | None:
        """What the last check found (None before the first)."""
        return self._serving

    async def set(self, serving: bool) -> None:
        """Report ``serving`` for every service now."""
        status = SERVING if serving else NOT_SERVING
        for name in self._services:
            await self._servicer.set(name, status)
        if self._serving is not None and serving != self._serving:
            if serving:
                log.warning("the database answers again: SERVING")
            else:
                log.warning("the database is unreachable: NOT_SERVING until it answers")
        self._serving = serving

    def start(self) -> None:
        """Start watching (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="loom-health")

    async def stop(self) -> None:
        """Stop watching."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: shutdown must not hang on a ping the driver holds on to.
            await asyncio.wait({self._task}, timeout=self._timeout)
            self._task = None

    async def check(self) -> bool:
        """Ping once and report the result."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._ping()
            reachable = True
        except Exception:  # noqa: BLE001 - any failure to answer is "unreachable"
            reachable = False
        if reachable != self._serving:
            await self.set(reachable)
        return reachable

    async def _watch(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self._interval)
