"""Embeddings shared between the callers that ask for them at about the same
time: one text is embedded once, and the texts of concurrent callers are
embedded together in one batch.

With memory AUTO a message's text is embedded twice within a few
milliseconds: as the recall query, and for the episodic write of the same
message. At many concurrent streams the embedding model (one worker thread)
is the busiest part of Loom, and a batch of texts costs it less than the
same texts one by one.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.memory.embeddings import Embedder, Vectors

__all__ = ["SharedEmbedder"]

Row = Any  # one float32 vector (numpy)


class SharedEmbedder:
    """``embedder``, with texts asked for while a batch runs queued for the
    next batch (so batching costs no wait when the model is idle), a text
    already queued or running shared by every caller that asks for it, and
    the vectors of the last ``recent`` texts kept (at 384 dimensions, 1.5 kB
    each: 256 of them hold 0.4 MB). Up to ``concurrency`` batches run at
    once: 1 for a model in Loom's process (one worker thread), more for an
    endpoint, which would otherwise answer a long queue (a batch of 1,000
    memories is four requests) one round trip after another."""

    def __init__(
        self, embedder: Embedder, *, recent: int = 256, max_batch: int = 32, concurrency: int = 1
    ) -> None:
        self._embedder = embedder
        self._recent: OrderedDict[str, Row] = OrderedDict()
        self._limit = recent
        self._max_batch = max_batch
        self._concurrency = max(1, concurrency)
        self._waiting: dict[str, asyncio.Future[Row]] = {}
        self._queue: list[str] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def model_name(self) -> str:
        """The wrapped embedder's model."""
        return self._embedder.model_name

    @property
    def dim(self) -> int:
        """The wrapped embedder's vector size."""
        return self._embedder.dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """One unit row per text, as the wrapped embedder gives them."""
        if not texts:
            return await self._embedder.embed(texts)
        rows: list[Row | asyncio.Future[Row]] = []
        for text in texts:
            row = self._recent.get(text)
            if row is not None:
                self._recent.move_to_end(text)
                rows.append(row)
                continue
            future = self._waiting.get(text)
            if future is None:
                future = asyncio.get_running_loop().create_future()
                self._waiting[text] = future
                self._queue.append(text)
            rows.append(future)
        if self._queue and (self._runner is None or self._runner.done()):
            self._runner = asyncio.create_task(self._run(), name="shared embeddings")
        pending = {id(r): r for r in rows if isinstance(r, asyncio.Future)}
        if pending:
            # Shielded: a caller that goes away must not cancel what others
            # share. One wait for all (not one shield per text: 40-80 ms a
            # batch of 1,000 on a loaded machine).
            await asyncio.shield(asyncio.gather(*pending.values()))
        got = [r.result() if isinstance(r, asyncio.Future) else r for r in rows]
        return np.stack(got).astype(np.float32, copy=False)

    async def _run(self) -> None:
        """Embed what is queued, up to ``concurrency`` batches at a time,
        until nothing is."""
        while self._queue:
            batches: list[list[str]] = []
            while self._queue and len(batches) < self._concurrency:
                batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
                batches.append(batch)
            await asyncio.gather(*(self._embed(batch) for batch in batches))

    async def _embed(self, batch: list[str]) -> None:
        """Embed one batch and settle its texts, with the vectors or the error."""
        try:
            vectors = await self._embedder.embed(batch)
        except BaseException as exc:
            for text in batch:
                self._settle(text, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for text, row in zip(batch, vectors, strict=True):
            self._keep(text, row.copy())
            self._settle(text, row)

    def _keep(self, text: str, row: Row) -> None:
        self._recent[text] = row
        self._recent.move_to_end(text)
        while len(self._recent) > self._limit:
            self._recent.popitem(last=False)

    def _settle(self, text: str, outcome: Row | BaseException) -> None:
        future = self._waiting.pop(text, None)
        if future is None or future.done():
            return
        if isinstance(outcome, asyncio.CancelledError):
            future.cancel()
        elif isinstance(outcome, BaseException):
            future.set_exception(outcome)
            # Retrieved here too: every caller of it may have gone away.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
        else:
            future.set_result(outcome)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)
