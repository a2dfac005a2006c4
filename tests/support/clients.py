"""The Python client (loom_client) in tests: ``Loom`` and ``AsyncLoom`` behind
one awaitable surface, so that one test body exercises both against the
in-process server."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

__all__ = ["Uniform"]


def _settle(result: Any) -> Any:
    return list(result) if isinstance(result, Iterator) else result


class Uniform:
    """Either client with every call awaitable. A blocking client's calls run
    in a worker thread (the in-process server shares the test's event loop);
    iterators, lazy or async, come back as lists."""

    def __init__(self, target: Any, *, threaded: bool) -> None:
        self._target = target
        self._threaded = threaded

    @property
    def raw(self) -> Any:
        """The client itself, for what the uniform surface hides."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return Uniform(attr, threaded=self._threaded)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._threaded:
                return await asyncio.to_thread(lambda: _settle(attr(*args, **kwargs)))
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return await result
            if isinstance(result, AsyncIterator):
                return [item async for item in result]
            return result

        return call
