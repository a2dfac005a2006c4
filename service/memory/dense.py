"""Exact cosine search over one collection's vectors, in this process.

Why not Chroma's HNSW in the search path: in Chroma 1.5.9 any ``where``
filter makes a query scan the collection's metadata (about 30-50 ms with
10,000 records on 2 cores, against 1-4 ms without a filter), and a user's
scope needs a filter. A matrix product over the cached vectors of the
collection is exact, takes about a millisecond for 10,000 vectors of 384
dimensions, and applies the scope as a mask. Chroma stays the store every
replica shares and the source this cache is built from.

The product runs on one thread: with OpenBLAS's default of a thread per
core, a 10,000 x 384 product took 2.6-2.9 ms instead of 0.75 ms on this
2-core machine under load, and its spinning threads took the cores the query
embedding needed (``single_threaded_blas``).

Not thread-safe: the owner serialises calls.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["VectorSet", "single_threaded_blas"]


@functools.cache
def single_threaded_blas() -> None:
    """Limit the process's BLAS (numpy's OpenBLAS) to one thread, once.

    Loom's products are matrix-vector ones, bound by memory, not compute:
    more threads buy nothing and cost a wake-up and a spin on each call."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


class VectorSet:
    """Unit vectors by document id, each with a scope string; removal leaves
    a tombstone, compacted once tombstones are half the slots."""

    def __init__(self, dim: int) -> None:
        single_threaded_blas()
        self.dim = dim
        self._slot_of: dict[str, int] = {}
        self._ids: list[str] = []
        self._vectors = np.zeros((64, dim), dtype=np.float32)
        self._alive = np.zeros(64, dtype=bool)
        self._scope = np.zeros(64, dtype=np.int32)
        self._scope_codes: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._slot_of)

    def nbytes(self) -> int:
        """About how much memory the set holds: its arrays, and about 150
        bytes a slot for its id (measured with tracemalloc on CPython 3.11)."""
        arrays = self._vectors.nbytes + self._alive.nbytes + self._scope.nbytes
        return arrays + 150 * len(self._ids)

    def add(self, doc_id: str, vector: npt.NDArray[np.float32], scope: str) -> None:
        """Store a vector, replacing any with the same id."""
        slot = self._slot_of.get(doc_id)
        if slot is None:
            slot = len(self._ids)
            self._grow(slot + 1)
            self._ids.append(doc_id)
            self._slot_of[doc_id] = slot
        self._vectors[slot] = vector
        self._alive[slot] = True
        code = self._scope_codes.setdefault(scope, len(self._scope_codes))
        self._scope[slot] = code

    def add_many(self, items: Iterable[tuple[str, npt.NDArray[np.float32], str]]) -> None:
        for doc_id, vector, scope in items:
            self.add(doc_id, vector, scope)

    def remove(self, doc_id: str) -> bool:
        slot = self._slot_of.pop(doc_id, None)
        if slot is None:
            return False
        self._alive[slot] = False
        if len(self._ids) > 1024 and len(self._slot_of) * 2 < len(self._ids):
            self._compact()
        return True

    def search(
        self, query: npt.NDArray[np.float32], scopes: Collection[str], limit: int
    ) -> list[tuple[str, float]]:
        """The ``limit`` nearest vectors of those scopes: (id, cosine), nearest first."""
        size = len(self._ids)
        codes = [self._scope_codes[s] for s in scopes if s in self._scope_codes]
        if size == 0 or not codes or limit <= 0:
            return []
        # A comparison a scope (a search names one to four) is about 20
        # times faster than np.isin over 10,000 slots.
        in_scope = self._scope[:size] == codes[0]
        for code in codes[1:]:
            in_scope |= self._scope[:size] == code
        mask = self._alive[:size] & in_scope
        count = int(np.count_nonzero(mask))
        if count == 0:
            return []
        # One product over every slot beats gathering the scope's rows first
        # (a copy of the matrix); out-of-scope slots are then masked out.
        sims = np.where(mask, self._vectors[:size] @ query, -np.inf)
        n = min(limit, count)
        top = np.argpartition(-sims, n - 1)[:n] if n < size else np.arange(size)
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(self._ids[i], float(sims[i])) for i in top if mask[i]]

    def cosine(self, query: npt.NDArray[np.float32], doc_ids: Iterable[str]) -> dict[str, float]:
        """Cosine of ``query`` with each stored id; unknown ids are left out."""
        pairs = [(d, self._slot_of[d]) for d in doc_ids if d in self._slot_of]
        if not pairs:
            return {}
        sims = self._vectors[[s for _, s in pairs]] @ query
        return {d: float(v) for (d, _), v in zip(pairs, sims, strict=True)}

    def _grow(self, size: int) -> None:
        if size <= len(self._alive):
            return
        capacity = max(size, len(self._alive) * 2)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        vectors[: len(self._vectors)] = self._vectors
        self._vectors = vectors
        for name in ("_alive", "_scope"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def _compact(self) -> None:
        live = [s for s in range(len(self._ids)) if self._alive[s]]
        self._ids = [self._ids[s] for s in live]
        self._slot_of = {d: i for i, d in enumerate(self._ids)}
        capacity = max(64, len(live) * 2)
        vectors = np.zeros((capacity, self.dim), dtype=np.float32)
        vectors[: len(live)] = self._vectors[live]
        scope = np.zeros(capacity, dtype=np.int32)
        scope[: len(live)] = self._scope[live]
        alive = np.zeros(capacity, dtype=bool)
        alive[: len(live)] = True
        self._vectors, self._scope, self._alive = vectors, scope, alive
