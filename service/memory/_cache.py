"""This process's search caches: per collection, the BM25 index and the
vectors built from Chroma and kept fresh, bounded together by bytes
(least recently searched evicted first).

Why. Chroma 1.5.9 cannot serve a search fast: any ``where`` filter (and a
user's scope needs one) makes a query scan the metadata, 30-50 ms with
10,000 records on 2 cores, ``get(ids, where)`` over 100 ms; and it has no
sparse index outside Chroma Cloud ("Sparse vector indexing is not enabled
in local", embedded and ``chroma run`` alike). So each process keeps, per
collection it searches, the vectors (``dense.VectorSet``, exact cosine by
one matrix product) and a BM25 index (``lexical.BM25Index``), both with the
scope of each memory (its user id, marked when invalidated:
``_codec.cache_scope``), what a filter looks at of each
(``filters.filter_keys``), so a filtered search ranks the matching memories
alone, and what the ranking's bonuses read of each (``ranking.Traits``).

Freshness across replicas. A process applies its own writes to its cache
(``apply``). Every write, once its records are in Chroma, bumps the
collection's version (``VersionSource``: in Loom the store's counter,
exact on MongoDB and FerretDB, ``service/store/versions.py``; without one,
``loom_version`` in the collection metadata, a read-modify-write that two
writers at the same instant can both miss); a search that sees another
version than its cache re-reads the records written since its last read
(``write_us``, minus ``refresh_margin``: exact while a write reaches Chroma
within that margin of the time its writer stamped, and writers' clocks
agree within it), and a cache older than ``max_age`` seconds is rebuilt
whole (that is when other replicas' deletions leave it; until then they
are only filtered out of results).

Concurrency. Concurrent searches of a collection whose cache is missing or
stale wait on the event loop for one build (its read runs in one worker
thread), rather than each holding a worker thread while it waits; the
caches are then searched and updated from worker threads under their locks.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from service.core.filtering import Filter
from service.memory._codec import (
    belongs,
    cache_scope,
    now_us,
    stored_text,
    where,
    written_since,
)
from service.memory.chroma import Collection, call, with_embeddings
from service.memory.dense import VectorSet
from service.memory.embeddings import Vectors
from service.memory.filters import filter_keys, matches
from service.memory.lexical import BM25Index, LexicalHit
from service.memory.ranking import (
    Candidates,
    SearchTuning,
    Traits,
    asks_time,
    query_names,
    traits_of,
)

if TYPE_CHECKING:
    from chromadb.api.types import Metadata, Where

__all__ = ["CollectionCache", "SearchCaches", "Write"]

log = logging.getLogger(__name__)

_PAGE = 2000  # records a read of a cache build asks Chroma for at once

# A record as a write gives it to a cache: (memory id, metadata, text, vector).
Write = tuple[str, Mapping[str, object], str, npt.ArrayLike]


@dataclass(slots=True)
class CollectionCache:
    """One collection's memories as this process searches them."""

    lexical: BM25Index
    vectors: VectorSet
    collection_id: str
    version: int
    built: float  # monotonic time of the last full build
    refreshed_us: int  # wall clock (UTC microseconds) when the last build or refresh began
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What a filter looks at of each memory, and its scope under "scope".
    facets: dict[str, dict[str, object]] = field(default_factory=dict)
    # What the ranking's bonuses read of each memory (``ranking.Traits``).
    traits: dict[str, Traits] = field(default_factory=dict)

    def put(
        self, memory_id: str, meta: Mapping[str, object], text: str, vector: npt.ArrayLike
    ) -> None:
        scope = cache_scope(meta)
        context = str(meta.get("context", ""))
        self.lexical.add(memory_id, text, scope, context)
        self.vectors.add(memory_id, np.asarray(vector, dtype=np.float32), scope)
        self.facets[memory_id] = filter_keys(meta) | {"scope": scope}
        self.traits[memory_id] = traits_of(text, context, self.lexical.analyzer)

    def drop(self, memory_id: str) -> None:
        self.lexical.remove(memory_id)
        self.vectors.remove(memory_id)
        self.facets.pop(memory_id, None)
        self.traits.pop(memory_id, None)

    def __len__(self) -> int:
        return len(self.vectors)

    def nbytes(self) -> int:
        """About how much memory the cache holds (its BM25 index, vectors and
        traits: about 200 bytes a memory for its ``Traits`` and their entry)."""
        return self.lexical.nbytes() + self.vectors.nbytes() + 200 * len(self.traits)

    def nearest(self, vector: Vectors, scopes: list[str], n: int) -> list[tuple[str, float]]:
        """The ``n`` nearest memories of those scopes: (id, cosine), nearest first."""
        with self.lock:
            return self.vectors.search(vector, scopes, n)

    def matching(self, query: str, scopes: list[str], n: int) -> list[LexicalHit]:
        """The ``n`` best BM25 matches of those scopes, best first."""
        with self.lock:
            return self.lexical.search(query, scopes, n)

    def candidates(self, query: str, vector: Vectors, scopes: list[str], n: int) -> Candidates:
        """The ``n`` best of each side and both signals of every one of them."""
        with self.lock:
            found = self.lexical.search(query, scopes, n)
            dense = self.vectors.search(vector, scopes, n)
            ids = Candidates.pool(dense, found)
            cosine = self.vectors.cosine(vector, ids)
            bm25 = {h.doc_id: h for h in found}
            missing = [i for i in ids if i not in bm25]
            if missing:
                bm25.update(self.lexical.score(query, missing, scopes))
            return self._found(query, dense, found, cosine, bm25)

    def filtered(
        self, query: str, vector: Vectors | None, scopes: list[str], where: Filter, n: int
    ) -> Candidates:
        """``candidates`` among the memories of those scopes that match the
        filter only: both signals of each, the ``n`` best of each side."""
        with self.lock:
            ids = [
                i
                for i, facets in self.facets.items()
                if facets["scope"] in scopes and matches(where, facets)
            ]
            cosine = self.vectors.cosine(vector, ids) if vector is not None else {}
            bm25 = self.lexical.score(query, ids, scopes)
            dense = sorted(cosine.items(), key=lambda p: (-p[1], p[0]))[:n]
            found = sorted(
                (h for h in bm25.values() if h.score > 0), key=lambda h: (-h.score, h.doc_id)
            )[:n]
            return self._found(query, dense, found, cosine, bm25)

    def _found(
        self,
        query: str,
        dense: list[tuple[str, float]],
        found: list[LexicalHit],
        cosine: dict[str, float],
        bm25: dict[str, LexicalHit],
    ) -> Candidates:
        """What both sides found, with what the bonuses read of the query
        and of each pooled memory (under the lock)."""
        traits = {i: self.traits[i] for i in Candidates.pool(dense, found) if i in self.traits}
        names = query_names(query, self.lexical.analyzer)
        return Candidates(dense, found, cosine, bm25, names, traits, asks_time(query))


class SearchCaches:
    """The caches of the collections this process searched, least recently
    searched dropped first once they hold more than ``max_bytes`` together
    (as each cache's ``nbytes`` estimates it when built or refreshed); see
    the module docstring."""

    def __init__(
        self, tuning: SearchTuning, *, max_age: float, margin_us: int, max_bytes: int
    ) -> None:
        self._tuning = tuning
        self._max_age = max_age
        self._margin_us = margin_us
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, CollectionCache] = OrderedDict()
        self._sizes: dict[str, int] = {}  # each entry's nbytes when last kept
        self._lock = threading.Lock()  # the entries are read and written from worker threads
        # The build in flight of each collection; touched on the event loop only.
        self._builds: dict[str, asyncio.Task[CollectionCache]] = {}

    async def get(
        self, collection: Collection, tenant: str, assistant_id: str, version: int, *, dim: int
    ) -> CollectionCache:
        """The collection's cache at ``version``: built on first use,
        refreshed when another writer moved the version, rebuilt when older
        than ``max_age`` or the collection was re-created. ``dim`` is the
        vector length when the collection's metadata does not say.

        Raises:
            Unavailable: the Chroma server cannot be reached.
        """
        name = collection.name
        while (entry := self._current(collection, version)) is None:
            build = self._builds.get(name)
            if build is None or build.done():
                build = asyncio.ensure_future(
                    call(self._refresh, collection, tenant, assistant_id, version, dim)
                )
                self._builds[name] = build
                build.add_done_callback(functools.partial(self._built, name))
                return await asyncio.shield(build)
            # Another search is reading this collection: wait for it here,
            # holding no worker thread, then look again (it may have read
            # another version than this search's).
            await asyncio.shield(build)
        return entry

    def _built(self, name: str, build: asyncio.Task[CollectionCache]) -> None:
        if self._builds.get(name) is build:
            del self._builds[name]
        if not build.cancelled():
            build.exception()  # observed, even when every search that awaited it is gone

    def _current(self, collection: Collection, version: int) -> CollectionCache | None:
        with self._lock:
            entry = self._entries.get(collection.name)
            if entry is None or entry.version != version or self._stale(entry, collection):
                return None
            self._entries.move_to_end(collection.name)
            return entry

    def _stale(self, entry: CollectionCache, collection: Collection) -> bool:
        """Whether the entry must be rebuilt whole."""
        return (
            entry.collection_id != str(collection.id)
            or time.monotonic() - entry.built >= self._max_age
        )

    def _refresh(
        self, collection: Collection, tenant: str, assistant_id: str, version: int, dim: int
    ) -> CollectionCache:
        """Read what the cache lacks from Chroma (everything, or the records
        written since its last read) and keep it (blocking)."""
        began = now_us()
        with self._lock:
            entry = self._entries.get(collection.name)
        if entry is None or self._stale(entry, collection):
            t = self._tuning
            entry = CollectionCache(
                BM25Index(k1=t.k1, b=t.b, context_weight=t.context_weight),
                VectorSet(int((collection.metadata or {}).get("embedding_dim") or dim or 1)),
                str(collection.id),
                version,
                time.monotonic(),
                began,
            )
            since: Where = where(tenant, assistant_id)
        else:
            since = written_since(entry.refreshed_us - self._margin_us)
        rows = list(_read(collection, since))
        with entry.lock:
            for memory_id, document, meta, vector in rows:
                if belongs(meta, tenant, assistant_id):
                    entry.put(memory_id, meta, stored_text(document, meta), vector)
            entry.version = version
            entry.refreshed_us = began
        self._keep(collection.name, entry)
        log.debug(
            "memory cache of %s: %d records (%d read)", collection.name, len(entry), len(rows)
        )
        return entry

    def _keep(self, name: str, entry: CollectionCache) -> None:
        size = entry.nbytes()
        with self._lock:
            self._entries[name] = entry
            self._entries.move_to_end(name)
            self._sizes[name] = size
            total = sum(self._sizes.values())
            while total > self._max_bytes and len(self._entries) > 1:
                dropped, _ = self._entries.popitem(last=False)
                total -= self._sizes.pop(dropped, 0)

    def nbytes(self) -> int:
        """About how much memory the caches hold together."""
        with self._lock:
            return sum(self._sizes.values())

    def apply(
        self,
        collection: Collection,
        before: int,
        after: int,
        puts: list[Write],
        drops: list[str],
    ) -> None:
        """Bring the collection's cache, if any, up to date with this
        process's own write (blocking). It is current afterwards if nobody
        else wrote since it was (the version went from ``before`` to
        ``after`` = before + 1); otherwise its version stays behind and the
        next search refreshes it."""
        with self._lock:
            entry = self._entries.get(collection.name)
        if entry is None or entry.collection_id != str(collection.id):
            return
        with entry.lock:
            for memory_id, meta, text, vector in puts:
                entry.put(memory_id, meta, text, vector)
            for memory_id in drops:
                entry.drop(memory_id)
            if entry.version == before and after == before + 1:
                entry.version = after

    def forget(self, name: str) -> None:
        """Drop the cache of that collection."""
        with self._lock:
            self._entries.pop(name, None)
            self._sizes.pop(name, None)

    async def close(self) -> None:
        """Let the builds in flight end, then drop every cache."""
        await asyncio.gather(*self._builds.values(), return_exceptions=True)
        with self._lock:
            self._entries.clear()
            self._sizes.clear()


def _read(
    collection: Collection, since: Where
) -> Iterator[tuple[str, str | None, Metadata | None, npt.ArrayLike]]:
    """(id, document, metadata, embedding) of the matching records, by pages."""
    offset = 0
    while True:
        rows = collection.get(
            where=since,
            include=["documents", "metadatas", "embeddings"],
            limit=_PAGE,
            offset=offset,
        )
        yield from with_embeddings(rows)
        if len(rows["ids"]) < _PAGE:
            return
        offset += _PAGE
