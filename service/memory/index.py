"""The memory index: an assistant's memories in Chroma, found by hybrid
(dense + BM25) search within a user's scope; ``ChromaMemoryIndex`` is the
``MemoryIndex`` of ``ports.py``.

Layout. One Chroma collection per (tenant, assistant), in cosine space,
that Chroma never embeds for (Loom gives every vector): ``collection.py``,
which also checks that a collection was embedded with the configured model
(else ``EmbeddingMismatch``: ``python -m service memory reindex``,
``reindex.py``, re-embeds it). Each memory is one record (``_codec.py``).
Every read checks ``tenant`` and ``assistant_id`` on what Chroma returns
(``list_records`` and ``delete_where`` filter on them in Chroma), though
the collection already implies them; reads that need no vectors (get,
list, count, delete) work whatever the model.

Search. Each process searches its own caches of the collections
(``_cache.py``: why, and how they follow other replicas' writes) and ranks
what they find (``ranking.py``); the records returned are then read from
Chroma by id and checked there (tenant, assistant, scope), so a memory that
was deleted or moved is never returned, whatever a cache still holds.

Threads. Every Chroma call runs in a worker thread (``chroma.call``); so
does the ranking over the caches.

Errors: ``EmbeddingMismatch`` (FAILED_PRECONDITION), ``Unavailable`` when
the Chroma server cannot be reached, ``ValueError`` for a bad argument
(unknown mode, ``delete_where`` without a filter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypedDict, Unpack

import numpy as np

from service.core.filtering import Filter
from service.memory import chroma, ranking
from service.memory._cache import CollectionCache, SearchCaches, Write
from service.memory._codec import (
    belongs,
    created_us,
    in_scope,
    now_us,
    replacing,
    scopes_of,
    to_metadata,
    to_record,
    where,
)
from service.memory.collection import Collections, collection_name
from service.memory.embeddings import Embedder, Vectors
from service.memory.filters import matches
from service.memory.ports import MODES, MemoryHit, MemoryRecord, VersionSource
from service.memory.ranking import Ranked, SearchTuning

__all__ = ["ChromaMemoryIndex", "IndexOptions", "open_index"]


class ChromaMemoryIndex:
    """``MemoryIndex`` over a chromadb client; see the module docstring.

    ``max_cached_bytes`` bounds the memory this process's search caches
    hold together (about 3 KB a memory with MiniLM's 384 dimensions and a
    short text: the vector, its id, the BM25 postings); the least recently
    searched collections are dropped first and rebuilt from Chroma when
    searched again.
    ``refresh_margin`` is how far back (seconds) a refresh after another
    replica's write looks, to cover clocks that disagree and writes in flight.
    ``context_vectors=False`` embeds a record's text alone, ignoring its
    context on the dense side (about four times faster ingest of records
    with a context; BM25 still indexes the context).
    """

    def __init__(
        self,
        client: chroma.Client,
        embedder: Embedder,
        *,
        tuning: SearchTuning | None = None,
        versions: VersionSource | None = None,
        cache_max_age: float = 300.0,
        refresh_margin: float = 30.0,
        max_cached_bytes: int = 512 * 2**20,
        context_vectors: bool = True,
        owns_client: bool = False,
    ) -> None:
        self.embedder = embedder
        self.tuning = tuning or SearchTuning()
        self._collections = Collections(client, embedder, versions)
        self._caches = SearchCaches(
            self.tuning,
            max_age=cache_max_age,
            margin_us=int(refresh_margin * 1_000_000),
            max_bytes=max_cached_bytes,
        )
        self._owns_client = owns_client
        self._context_vectors = context_vectors

    def cached_bytes(self) -> int:
        """About how much memory this process's search caches hold."""
        return self._caches.nbytes()

    @property
    def client(self) -> chroma.Client:
        """The chromadb client (for tools that share it)."""
        return self._collections.client

    @property
    def versions(self) -> VersionSource | None:
        """The shared write counter, if the index has one."""
        return self._collections.versions

    def forget(self, tenant: str, assistant_id: str) -> None:
        """Drop what this process holds of the assistant's collection (its
        search cache and handle), before the collection goes or is replaced."""
        self._caches.forget(collection_name(tenant, assistant_id))
        self._collections.forget(tenant, assistant_id)

    # -- writes --------------------------------------------------------------

    async def embed(self, records: Sequence[MemoryRecord]) -> Vectors:
        """One vector per record: the text's, or with a context the
        normalised sum of the text's and the context-and-text's."""
        vectors = await self.embedder.embed([r.text for r in records])
        if not self._context_vectors:
            return vectors
        with_context = [i for i, r in enumerate(records) if r.context.strip()]
        if with_context:
            extra = await self.embedder.embed(
                [f"{records[i].context}\n{records[i].text}" for i in with_context]
            )
            summed = vectors[with_context] + extra
            norms = np.linalg.norm(summed, axis=1, keepdims=True)
            norms[norms == 0] = 1e-12
            vectors[with_context] = summed / norms
        return vectors

    async def upsert(self, records: Sequence[MemoryRecord]) -> None:
        groups: dict[tuple[str, str], dict[str, MemoryRecord]] = {}
        for record in records:
            groups.setdefault((record.tenant, record.assistant_id), {})[record.memory_id] = record
        for (tenant, assistant_id), by_id in groups.items():
            await self._upsert_group(tenant, assistant_id, list(by_id.values()))

    async def _upsert_group(
        self, tenant: str, assistant_id: str, records: list[MemoryRecord]
    ) -> None:
        existing = await self._collections.open(tenant, assistant_id)
        before = (
            0
            if existing is None
            else await self._collections.version(existing, tenant, assistant_id)
        )
        vectors = await self.embed(records)
        collection = existing
        if collection is None:
            collection = await self._collections.create(tenant, assistant_id, int(vectors.shape[1]))
        stored: dict[str, Mapping[str, object]] = {}
        if existing is not None:
            found = await chroma.call(
                existing.get, ids=[r.memory_id for r in records], include=["metadatas"]
            )
            stored = dict(zip(found["ids"], found["metadatas"] or [], strict=True))
        written = now_us()
        # A key the new version leaves out is deleted, not kept (an update
        # replaces the metadata whole).
        metadatas = [to_metadata(r) | {"write_us": written} for r in records]
        replacements = [
            replacing(m, stored.get(r.memory_id)) for r, m in zip(records, metadatas, strict=True)
        ]
        await chroma.upsert(
            collection, [r.memory_id for r in records], vectors, replacements, new=not stored
        )
        after = await self._collections.bump(tenant, assistant_id)
        puts: list[Write] = [
            (r.memory_id, meta, r.text, vector)
            for r, meta, vector in zip(records, metadatas, vectors, strict=True)
        ]
        await asyncio.to_thread(self._caches.apply, collection, before, after, puts, [])

    async def delete(self, tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> int:
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None or not memory_ids:
            return 0
        found = await chroma.call(
            collection.get, ids=list(dict.fromkeys(memory_ids)), include=["metadatas"]
        )
        ids = [
            i
            for i, m in zip(found["ids"], found["metadatas"] or [], strict=True)
            if belongs(m, tenant, assistant_id)
        ]
        return await self._delete_ids(collection, tenant, assistant_id, ids)

    async def delete_where(
        self,
        tenant: str,
        assistant_id: str,
        *,
        user_id: str | None = None,
        source_thread_id: str | None = None,
    ) -> int:
        if user_id is None and source_thread_id is None:
            raise ValueError("delete_where needs user_id or source_thread_id (or drop_assistant)")
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None:
            return 0
        matching = where(tenant, assistant_id, user_id=user_id, source_thread_id=source_thread_id)
        found = await chroma.call(collection.get, where=matching, include=[])
        return await self._delete_ids(collection, tenant, assistant_id, list(found["ids"]))

    async def _delete_ids(
        self, collection: chroma.Collection, tenant: str, assistant_id: str, ids: list[str]
    ) -> int:
        if not ids:
            return 0
        before = await self._collections.version(collection, tenant, assistant_id)
        for start in range(0, len(ids), chroma.BATCH):
            await chroma.call(collection.delete, ids[start : start + chroma.BATCH])
        after = await self._collections.bump(tenant, assistant_id)
        await asyncio.to_thread(self._caches.apply, collection, before, after, [], ids)
        return len(ids)

    async def drop_assistant(self, tenant: str, assistant_id: str) -> None:
        from chromadb.errors import NotFoundError

        self.forget(tenant, assistant_id)
        try:
            await chroma.call(self.client.delete_collection, collection_name(tenant, assistant_id))
        except NotFoundError:
            return
        if self.versions is not None:
            await self.versions.bump(tenant, assistant_id)

    # -- reads ---------------------------------------------------------------

    async def get(self, tenant: str, assistant_id: str, memory_id: str) -> MemoryRecord | None:
        return (await self.get_many(tenant, assistant_id, [memory_id])).get(memory_id)

    async def get_many(
        self, tenant: str, assistant_id: str, memory_ids: Sequence[str]
    ) -> dict[str, MemoryRecord]:
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None:
            return {}
        wanted = list(dict.fromkeys(memory_ids))
        out: dict[str, MemoryRecord] = {}
        for start in range(0, len(wanted), chroma.BATCH):
            found = await chroma.call(
                collection.get,
                ids=wanted[start : start + chroma.BATCH],
                include=["documents", "metadatas"],
            )
            out.update(
                (i, to_record(i, d, m))
                for i, d, m in chroma.entries(found)
                if belongs(m, tenant, assistant_id)
            )
        return out

    async def list_records(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str | None,
        limit: int,
        offset: int,
        *,
        include_invalidated: bool = False,
        matching: Filter | None = None,
    ) -> list[MemoryRecord]:
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None or limit <= 0:
            return []
        scoped = where(tenant, assistant_id, user_id=user_id)
        found = await chroma.call(collection.get, where=scoped, include=["metadatas"])
        keyed = sorted(
            (created_us(meta), memory_id)
            for memory_id, meta in zip(found["ids"], found["metadatas"] or [], strict=True)
            if (include_invalidated or "invalidate_us" not in meta) and matches(matching, meta)
        )
        page = [memory_id for _, memory_id in keyed[max(offset, 0) : max(offset, 0) + limit]]
        if not page:
            return []
        rows = await chroma.call(collection.get, ids=page, include=["documents", "metadatas"])
        by_id = {
            i: to_record(i, d, m)
            for i, d, m in chroma.entries(rows)
            if belongs(m, tenant, assistant_id)
        }
        return [by_id[i] for i in page if i in by_id]

    async def count(self, tenant: str, assistant_id: str) -> int:
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None:
            return 0
        return await chroma.call(collection.count)

    async def memory_ids(self, tenant: str, assistant_id: str) -> list[str]:
        collection = await self._collections.find(tenant, assistant_id)
        if collection is None:
            return []
        found = await chroma.call(collection.get, where=where(tenant, assistant_id), include=[])
        return list(found["ids"])

    async def nearest(
        self, tenant: str, assistant_id: str, user_id: str, text: str, k: int
    ) -> list[MemoryHit]:
        (collection, version), vectors = await asyncio.gather(
            self._collections.open_versioned(tenant, assistant_id), self.embedder.embed([text])
        )
        if collection is None or k <= 0:
            return []
        cache = await self._caches.get(
            collection, tenant, assistant_id, version, dim=self.embedder.dim
        )

        def run() -> list[MemoryHit]:
            ranked = ranking.by_dense(cache.nearest(vectors[0], [user_id], k))
            return self._resolve(collection, tenant, assistant_id, [user_id], None, ranked, k)

        return await chroma.call(run)

    async def search(
        self,
        tenant: str,
        assistant_id: str,
        query: str,
        *,
        user_id: str,
        limit: int,
        min_score: float = 0.0,
        mode: str = "hybrid",
        include_invalidated: bool = False,
        matching: Filter | None = None,
    ) -> list[MemoryHit]:
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        if limit <= 0 or not query.strip():
            return []
        vector: Vectors | None = None
        if mode == "lexical":
            collection, version = await self._collections.open_versioned(tenant, assistant_id)
        else:
            (collection, version), vectors = await asyncio.gather(
                self._collections.open_versioned(tenant, assistant_id), self.embedder.embed([query])
            )
            vector = vectors[0]
        if collection is None:
            return []
        cache = await self._caches.get(
            collection, tenant, assistant_id, version, dim=self.embedder.dim
        )
        scopes = scopes_of(user_id, invalidated=include_invalidated)
        n = max(self.tuning.candidates, limit)

        def run() -> list[MemoryHit]:
            # Ranking and reading the winners from Chroma share one worker
            # thread: a hop less, which is a millisecond on a busy 2-core box.
            ranked = self._rank(cache, query, vector, scopes, n, mode, matching)
            ranked = [r for r in ranked if r.score >= min_score]
            return self._resolve(collection, tenant, assistant_id, scopes, matching, ranked, limit)

        return await chroma.call(run)

    def _rank(
        self,
        cache: CollectionCache,
        query: str,
        vector: Vectors | None,
        scopes: list[str],
        n: int,
        mode: str,
        matching: Filter | None,
    ) -> list[Ranked]:
        """Candidates of the mode's sides, each with every signal, best first;
        with a filter, among the matching memories only."""
        if matching:
            found = cache.filtered(query, vector, scopes, matching, n)
            if mode == "dense" and vector is not None:
                return ranking.by_dense(found.dense)
            if mode == "lexical" or vector is None:
                return ranking.by_lexical(found.lexical)
            return ranking.fuse(found, self.tuning)
        if mode == "dense" and vector is not None:
            return ranking.by_dense(cache.nearest(vector, scopes, n))
        if mode == "lexical" or vector is None:
            return ranking.by_lexical(cache.matching(query, scopes, n))
        return ranking.fuse(cache.candidates(query, vector, scopes, n), self.tuning)

    def _resolve(
        self,
        collection: chroma.Collection,
        tenant: str,
        assistant_id: str,
        scopes: list[str],
        matching: Filter | None,
        ranked: list[Ranked],
        limit: int,
    ) -> list[MemoryHit]:
        """The records of the best ``limit`` ranked ids, read from Chroma and
        checked there: a memory deleted, invalidated, moved to another scope,
        no longer matching the filter, or of another tenant or assistant is
        skipped, whatever the cache said."""
        hits: list[MemoryHit] = []
        seen: set[str] = set()
        # Chroma's get costs about 0.07 ms an id over a fixed 0.5 ms, and a
        # winner is rarely skipped: read the best ``limit`` first, and twice
        # as many at a time only when some were.
        start, step = 0, max(limit, 1)
        while start < len(ranked):
            chunk = ranked[start : start + step]
            start, step = start + step, max(2 * limit, 20)
            rows = collection.get(
                ids=[r.memory_id for r in chunk], include=["documents", "metadatas"]
            )
            found = {
                i: to_record(i, d, m)
                for i, d, m in chroma.entries(rows)
                if belongs(m, tenant, assistant_id) and in_scope(m, scopes) and matches(matching, m)
            }
            for r in chunk:
                record = found.get(r.memory_id)
                if record is None:
                    continue
                key = ranking.text_key(record.text) if self.tuning.dedupe_text else r.memory_id
                if key in seen:
                    continue
                seen.add(key)
                hits.append(MemoryHit(record, r.score, r.dense, r.lexical))
                if len(hits) == limit:
                    return hits
        return hits

    async def close(self) -> None:
        """Forget this process's search caches and, if ``open_index`` made
        the client, close it."""
        await self._caches.close()
        if self._owns_client:
            self._owns_client = False
            await asyncio.to_thread(chroma.close_client, self.client)


class IndexOptions(TypedDict, total=False):
    """``ChromaMemoryIndex``'s options, as ``open_index`` passes them on."""

    tuning: SearchTuning | None
    versions: VersionSource | None
    cache_max_age: float
    refresh_margin: float
    max_cached_bytes: int
    context_vectors: bool


def open_index(
    data_dir: Path,
    chroma_url: str | None,
    embedder: Embedder,
    *,
    wrap_client: Callable[[chroma.Client], chroma.Client] | None = None,
    **options: Unpack[IndexOptions],
) -> ChromaMemoryIndex:
    """The index over an embedded Chroma in ``data_dir/chroma``, or over the
    Chroma server at ``chroma_url`` (``chroma.open_client``); the index
    closes the client in ``close()``. ``wrap_client`` may wrap the chromadb
    client first (tracing does).

    Raises:
        ValueError: ``chroma_url`` is not an http(s) URL.
        Unavailable: no Chroma server answers at ``chroma_url``.
    """
    client = chroma.open_client(data_dir, chroma_url)
    if wrap_client is not None:
        client = wrap_client(client)
    return ChromaMemoryIndex(client, embedder, owns_client=True, **options)
