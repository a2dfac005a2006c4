"""Loom on an event loop of its own, in a thread, for tests that call it
synchronously: hypothesis runs examples and state machines as plain
functions, which cannot wait on the test session's loop while it is idle."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

from service.config import Settings
from service.server import Loom, build

__all__ = ["ThreadedLoom"]

T = TypeVar("T")


class ThreadedLoom:
    """A real Loom (grpc.aio server, FerretDB, Chroma, the model endpoint of
    its settings) served from a daemon thread; ``stop`` ends both."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loom-threaded", daemon=True
        )
        self._loom: Loom | None = None

    def start(self) -> ThreadedLoom:
        self._thread.start()

        async def started() -> Loom:
            loom = build(self._settings)
            await loom.start()
            return loom

        self._loom = self.run(started())
        return self

    @property
    def loom(self) -> Loom:
        assert self._loom is not None, "not started"
        return self._loom

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.loom.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on Loom's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def new_key(self, prefix: str = "t") -> str:
        """The secret of a key for a brand-new tenant."""
        created = self.run(self.loom.keys.create(f"{prefix}-{uuid.uuid4().hex[:12]}"))
        return created.secret

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stop(self) -> None:
        try:
            if self._loom is not None:
                self.run(self._loom.stop(0))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            if not self._thread.is_alive():
                self._loop.close()
