"""The memory index: an assistant's memories in Chroma, found by hybrid
(dense + BM25) search within a user's scope.

Layout. One Chroma collection per (tenant, assistant), named
``loom-mem-`` + the first 40 hex digits of sha256(tenant, assistant id), so
any id is a valid name, two tenants never share a collection, and dropping
an assistant is one ``delete_collection``. Cosine space
(``configuration={"hnsw": {"space": "cosine"}}``, which 1.5.9 reads; the
``hnsw:space`` metadata key is the legacy form). The collection's metadata
records ``tenant``, ``assistant_id``, ``embedding_model``,
``embedding_dim`` and ``loom_version`` (a write counter). Each memory is one
record: id = memory id, document = text, embedding = given by Loom (Chroma
never embeds: ``embedding_function=None``), metadata = ``tenant``,
``assistant_id``, ``user_id``, ``kind``, ``source_thread_id``,
``source_message_id``, ``context``, ``create_us``/``update_us`` (UTC
microseconds), ``write_us`` (when it was written) and the caller's metadata
under ``m.<key>``. Every read checks ``tenant`` and ``assistant_id`` on what
Chroma returns (``list_records`` and ``delete_where`` filter on them in Chroma), though
the collection already implies them.

Vector spaces. A collection keeps the model it was built with; searching or
writing it with another embedder raises ``EmbeddingMismatch`` (run
``python -m service memory reindex``, which calls ``reindex_all``). Reads
that need no vectors (get, list, count, delete) still work.

Search. Chroma 1.5.9 cannot serve it fast: any ``where`` filter (and a
user's scope needs one) makes a query scan the metadata, 30-50 ms with
10,000 records on 2 cores, ``get(ids, where)`` over 100 ms; and it has no
sparse index outside Chroma Cloud ("Sparse vector indexing is not enabled
in local", embedded and ``chroma run`` alike). So each process keeps, per
collection it searches, a cache built from Chroma: the vectors
(``dense.VectorSet``, exact cosine by one matrix product) and a BM25 index
(``lexical.BM25Index``), both with the user id of each memory as its scope.
The ``candidates`` best of each side are pooled and ranked by
``ranking.py`` (the score, and why it is absolute). The records returned
are then read from Chroma by id and checked there (tenant, assistant,
scope), so a memory that was deleted or moved is never returned, whatever
a cache still holds.

Freshness across replicas. A process applies its own writes to its cache.
Every write bumps the collection's version (``VersionSource``; by default
``loom_version`` in the collection metadata, a read-modify-write that two
replicas writing at the same instant can both miss); a search that sees
another version than its cache re-reads the records written since its last
read (``write_us``, minus ``refresh_margin``), and a cache older than
``cache_max_age`` seconds is rebuilt whole (that is when other replicas'
deletions leave it; until then they are only filtered out of results). Back
``VersionSource`` with an atomic counter (MongoDB ``$inc``) to make the
check exact.

Threads. Chroma's client is synchronous: every call runs in a worker thread
(``asyncio.to_thread``), for the embedded ``PersistentClient`` and the
``HttpClient`` alike (one code path; the HTTP client pools connections). So
does the ranking over the caches.

Errors: ``EmbeddingMismatch`` (FAILED_PRECONDITION), ``Unavailable`` when
the Chroma server cannot be reached, ``ValueError`` for a bad argument
(unknown mode, ``delete_where`` without a filter).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from service.core.errors import FailedPrecondition, Unavailable
from service.memory import ranking
from service.memory.dense import VectorSet
from service.memory.embeddings import Embedder, Vectors
from service.memory.lexical import BM25Index, LexicalHit
from service.memory.ports import MODES, MemoryHit, MemoryRecord, VersionSource
from service.memory.ranking import Candidates, Ranked, SearchTuning

__all__ = [
    "ChromaMemoryIndex",
    "EmbeddingMismatch",
    "collection_name",
    "open_index",
    "reindex_all",
]

log = logging.getLogger(__name__)

COLLECTION_PREFIX = "loom-mem-"
_META_PREFIX = "m."
_RESERVED = frozenset(
    {
        "tenant",
        "assistant_id",
        "user_id",
        "kind",
        "source_thread_id",
        "source_message_id",
        "context",
        "create_us",
        "update_us",
    }
)
_T = TypeVar("_T")


class EmbeddingMismatch(FailedPrecondition):
    """The assistant's memories were embedded by another model."""

    reason = "EMBEDDING_MODEL_MISMATCH"

    def __init__(self, tenant: str, assistant_id: str, stored: str, configured: str) -> None:
        super().__init__(
            f"the memories of assistant {assistant_id!r} were embedded with {stored!r} but "
            f"Loom is configured with {configured!r}; run `python -m service memory reindex` "
            "to re-embed them (or configure the previous model again)",
            metadata={"assistant_id": assistant_id, "stored": stored, "configured": configured},
        )
        self.tenant = tenant


def collection_name(tenant: str, assistant_id: str) -> str:
    """The Chroma collection of an assistant's memories."""
    digest = hashlib.sha256(f"{tenant}\x1f{assistant_id}".encode()).hexdigest()[:40]
    return COLLECTION_PREFIX + digest


def _micros(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1_000_000)


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value / 1_000_000, tz=UTC)


def _to_metadata(record: MemoryRecord) -> dict[str, str | int]:
    meta: dict[str, str | int] = {
        _META_PREFIX + key: value for key, value in record.metadata.items()
    }
    meta.update(
        tenant=record.tenant,
        assistant_id=record.assistant_id,
        user_id=record.user_id,
        kind=record.kind,
        source_thread_id=record.source_thread_id,
        source_message_id=record.source_message_id,
        context=record.context,
    )
    for key, moment in (("create_us", record.create_time), ("update_us", record.update_time)):
        micros = _micros(moment)
        if micros is not None:
            meta[key] = micros
    return meta


def _to_record(memory_id: str, document: str | None, meta: Any) -> MemoryRecord:
    meta = dict(meta or {})
    return MemoryRecord(
        memory_id=memory_id,
        tenant=str(meta.get("tenant", "")),
        assistant_id=str(meta.get("assistant_id", "")),
        user_id=str(meta.get("user_id", "")),
        text=document or "",
        kind=str(meta.get("kind", "")),
        source_thread_id=str(meta.get("source_thread_id", "")),
        source_message_id=str(meta.get("source_message_id", "")),
        create_time=_moment(meta.get("create_us")),
        update_time=_moment(meta.get("update_us")),
        metadata={
            key[len(_META_PREFIX) :]: str(value)
            for key, value in meta.items()
            if key.startswith(_META_PREFIX)
        },
        context=str(meta.get("context", "")),
    )


def _where(tenant: str, assistant_id: str, **equal: Any) -> dict[str, Any]:
    clauses: list[dict[str, Any]] = [{"tenant": tenant}, {"assistant_id": assistant_id}]
    clauses += [{key: value} for key, value in equal.items() if value is not None]
    return {"$and": clauses}


def _scopes(user_id: str) -> list[str]:
    return [""] if user_id == "" else [user_id, ""]


def _belongs(meta: Any, tenant: str, assistant_id: str) -> bool:
    """Whether a record's metadata says it is of that tenant and assistant."""
    return bool(meta) and meta.get("tenant") == tenant and meta.get("assistant_id") == assistant_id


@dataclass(slots=True)
class _Cache:
    """One collection's memories as this process searches them: the BM25
    index and the vectors, built from Chroma and kept up to date."""

    lexical: BM25Index
    vectors: VectorSet
    collection_id: str
    version: int
    built: float  # monotonic time of the last full build
    refreshed_us: int  # wall clock (UTC microseconds) when the last build or refresh began
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, memory_id: str, meta: Any, text: str, vector: Any) -> None:
        user_id = str(meta.get("user_id", ""))
        self.lexical.add(memory_id, text, user_id, str(meta.get("context", "")))
        self.vectors.add(memory_id, np.asarray(vector, dtype=np.float32), user_id)

    def drop(self, memory_id: str) -> None:
        self.lexical.remove(memory_id)
        self.vectors.remove(memory_id)

    def __len__(self) -> int:
        return len(self.vectors)

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
                bm25.update(self.lexical.score(query, missing))
        return Candidates(dense, found, cosine, bm25)


def _now_us() -> int:
    return time.time_ns() // 1000


class ChromaMemoryIndex:
    """``MemoryIndex`` over a chromadb client; see the module docstring.

    ``max_cached_records`` bounds the memories held in this process's
    search caches together (about 1.5 KB each with MiniLM's 384 dimensions,
    plus the BM25 postings); the least recently searched collections are
    dropped first and rebuilt from Chroma when searched again.
    ``refresh_margin`` is how far back (seconds) a refresh after another
    replica's write looks, to cover clocks that disagree and writes in flight.
    ``context_vectors=False`` embeds a record's text alone, ignoring its
    context on the dense side (about four times faster ingest of records
    with a context; BM25 still indexes the context).
    """

    def __init__(
        self,
        client: Any,
        embedder: Embedder,
        *,
        tuning: SearchTuning | None = None,
        versions: VersionSource | None = None,
        cache_max_age: float = 300.0,
        refresh_margin: float = 30.0,
        max_cached_records: int = 500_000,
        context_vectors: bool = True,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self.embedder = embedder
        self.tuning = tuning or SearchTuning()
        self._versions = versions
        self._max_age = cache_max_age
        self._margin_us = int(refresh_margin * 1_000_000)
        self._max_cached = max_cached_records
        self._caches: OrderedDict[str, _Cache] = OrderedDict()
        self._handles: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._caches_lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        self._batch = 1000  # records a Chroma call; 1.5.9 takes up to 5,461
        self._owns_client = owns_client
        self._context_vectors = context_vectors

    @property
    def client(self) -> Any:
        """The chromadb client (for tools that share it)."""
        return self._client

    # -- collections ---------------------------------------------------------

    async def _call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a Chroma call in a worker thread; a lost server becomes Unavailable."""
        import httpx

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (httpx.TransportError, ConnectionError) as exc:
            raise Unavailable(
                f"the memory store (Chroma) cannot be reached ({type(exc).__name__})"
            ) from exc

    def _get_collection(self, tenant: str, assistant_id: str) -> Any | None:
        from chromadb.errors import NotFoundError

        try:
            return self._client.get_collection(collection_name(tenant, assistant_id))
        except NotFoundError:
            return None

    def _create_collection(self, tenant: str, assistant_id: str, dim: int) -> Any:
        return self._client.get_or_create_collection(
            collection_name(tenant, assistant_id),
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata={
                "tenant": tenant,
                "assistant_id": assistant_id,
                "embedding_model": self.embedder.model_name,
                "embedding_dim": dim,
                "loom_version": 0,
            },
        )

    def _check_model(self, collection: Any, tenant: str, assistant_id: str) -> None:
        stored = (collection.metadata or {}).get("embedding_model")
        if stored is not None and stored != self.embedder.model_name:
            raise EmbeddingMismatch(tenant, assistant_id, str(stored), self.embedder.model_name)

    async def _version(self, collection: Any, tenant: str, assistant_id: str) -> int:
        if self._versions is not None:
            return await self._versions.current(tenant, assistant_id)
        return int((collection.metadata or {}).get("loom_version", 0))

    async def _bump(self, tenant: str, assistant_id: str) -> int:
        if self._versions is not None:
            return await self._versions.bump(tenant, assistant_id)
        return await self._call(self._bump_metadata, tenant, assistant_id)

    def _bump_metadata(self, tenant: str, assistant_id: str) -> int:
        collection = self._get_collection(tenant, assistant_id)
        if collection is None:
            return 0
        meta = dict(collection.metadata or {})
        meta["loom_version"] = int(meta.get("loom_version", 0)) + 1
        collection.modify(metadata=meta)
        return int(meta["loom_version"])

    async def _open_versioned(self, tenant: str, assistant_id: str) -> tuple[Any | None, int]:
        """The collection checked against the embedder, and its version, for
        a search. With a ``VersionSource`` the collection handle is reused
        while the version stands still (every write, reindex and drop moves
        it), which saves a Chroma round trip a search."""
        if self._versions is None:
            collection = await self._open(tenant, assistant_id)
            if collection is None:
                return None, 0
            return collection, await self._version(collection, tenant, assistant_id)
        version = await self._versions.current(tenant, assistant_id)
        name = collection_name(tenant, assistant_id)
        with self._caches_lock:
            known = self._handles.get(name)
        if known is not None and known[1] == version:
            collection = known[0]
        else:
            collection = await self._call(self._get_collection, tenant, assistant_id)
            if collection is None:
                return None, version
            with self._caches_lock:
                self._handles[name] = (collection, version)
                self._handles.move_to_end(name)
                while len(self._handles) > 10_000:
                    self._handles.popitem(last=False)
        self._check_model(collection, tenant, assistant_id)
        return collection, version

    async def _open(self, tenant: str, assistant_id: str) -> Any | None:
        """The collection (fresh metadata), checked against the embedder."""
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is not None:
            self._check_model(collection, tenant, assistant_id)
        return collection

    # -- writes --------------------------------------------------------------

    async def _vectors(self, records: Sequence[MemoryRecord]) -> Vectors:
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
        existing = await self._open(tenant, assistant_id)
        before = 0 if existing is None else await self._version(existing, tenant, assistant_id)
        vectors = await self._vectors(records)
        collection: Any = existing
        if collection is None:
            collection = await self._call(
                self._create_collection, tenant, assistant_id, int(vectors.shape[1])
            )
            self._check_model(collection, tenant, assistant_id)
        written = _now_us()
        metadatas = [_to_metadata(r) | {"write_us": written} for r in records]
        for start in range(0, len(records), self._batch):
            chunk = records[start : start + self._batch]
            await self._call(
                collection.upsert,
                ids=[r.memory_id for r in chunk],
                embeddings=vectors[start : start + len(chunk)],
                documents=[r.text for r in chunk],
                metadatas=metadatas[start : start + len(chunk)],
            )
        after = await self._bump(tenant, assistant_id)
        puts = [
            (r.memory_id, meta, r.text, vector)
            for r, meta, vector in zip(records, metadatas, vectors, strict=True)
        ]
        await asyncio.to_thread(self._apply, collection, before, after, puts, [])

    def _cached(self, collection: Any) -> _Cache | None:
        with self._caches_lock:
            entry = self._caches.get(collection.name)
        if entry is None or entry.collection_id != str(collection.id):
            return None
        return entry

    def _apply(
        self,
        collection: Any,
        before: int,
        after: int,
        puts: list[tuple[str, Any, str, Any]],
        drops: list[str],
    ) -> None:
        """Bring this process's cache up to date with its own write. It is
        current afterwards if nobody else wrote since it was (the version
        went from ``before`` to ``after`` = before + 1); otherwise its version
        stays behind and the next search refreshes it."""
        entry = self._cached(collection)
        if entry is None:
            return
        with entry.lock:
            for memory_id, meta, text, vector in puts:
                entry.put(memory_id, meta, text, vector)
            for memory_id in drops:
                entry.drop(memory_id)
            if entry.version == before and after == before + 1:
                entry.version = after

    async def delete(self, tenant: str, assistant_id: str, memory_ids: Sequence[str]) -> int:
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is None or not memory_ids:
            return 0
        found = await self._call(
            collection.get, ids=list(dict.fromkeys(memory_ids)), include=["metadatas"]
        )
        ids = [
            i
            for i, m in zip(found["ids"], found["metadatas"], strict=True)
            if _belongs(m, tenant, assistant_id)
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
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is None:
            return 0
        where = _where(tenant, assistant_id, user_id=user_id, source_thread_id=source_thread_id)
        found = await self._call(collection.get, where=where, include=[])
        return await self._delete_ids(collection, tenant, assistant_id, list(found["ids"]))

    async def _delete_ids(
        self, collection: Any, tenant: str, assistant_id: str, ids: list[str]
    ) -> int:
        if not ids:
            return 0
        before = await self._version(collection, tenant, assistant_id)
        for start in range(0, len(ids), self._batch):
            await self._call(collection.delete, ids=ids[start : start + self._batch])
        after = await self._bump(tenant, assistant_id)
        await asyncio.to_thread(self._apply, collection, before, after, [], ids)
        return len(ids)

    async def drop_assistant(self, tenant: str, assistant_id: str) -> None:
        from chromadb.errors import NotFoundError

        name = collection_name(tenant, assistant_id)
        self._forget(name)
        try:
            await self._call(self._client.delete_collection, name)
        except NotFoundError:
            return
        if self._versions is not None:
            await self._versions.bump(tenant, assistant_id)

    def _forget(self, name: str) -> None:
        with self._caches_lock:
            self._caches.pop(name, None)
            self._handles.pop(name, None)

    # -- reads ---------------------------------------------------------------

    async def get(self, tenant: str, assistant_id: str, memory_id: str) -> MemoryRecord | None:
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is None:
            return None
        found = await self._call(
            collection.get, ids=[memory_id], include=["documents", "metadatas"]
        )
        if not found["ids"] or not _belongs(found["metadatas"][0], tenant, assistant_id):
            return None
        return _to_record(found["ids"][0], found["documents"][0], found["metadatas"][0])

    async def list_records(
        self, tenant: str, assistant_id: str, user_id: str | None, limit: int, offset: int
    ) -> list[MemoryRecord]:
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is None or limit <= 0:
            return []
        where = _where(tenant, assistant_id, user_id=user_id)
        found = await self._call(collection.get, where=where, include=["metadatas"])
        keyed = sorted(
            (int((meta or {}).get("create_us", 0)), memory_id)
            for memory_id, meta in zip(found["ids"], found["metadatas"] or [], strict=True)
        )
        page = [memory_id for _, memory_id in keyed[max(offset, 0) : max(offset, 0) + limit]]
        if not page:
            return []
        rows = await self._call(collection.get, ids=page, include=["documents", "metadatas"])
        by_id = {
            i: _to_record(i, d, m)
            for i, d, m in zip(rows["ids"], rows["documents"], rows["metadatas"], strict=True)
            if _belongs(m, tenant, assistant_id)
        }
        return [by_id[i] for i in page if i in by_id]

    async def count(self, tenant: str, assistant_id: str) -> int:
        collection = await self._call(self._get_collection, tenant, assistant_id)
        if collection is None:
            return 0
        return int(await self._call(collection.count))

    async def nearest(
        self, tenant: str, assistant_id: str, user_id: str, text: str, k: int
    ) -> list[MemoryHit]:
        (collection, version), vectors = await asyncio.gather(
            self._open_versioned(tenant, assistant_id), self.embedder.embed([text])
        )
        if collection is None or k <= 0:
            return []
        cache = await self._cache(collection, tenant, assistant_id, version)

        def run() -> list[MemoryHit]:
            ranked = ranking.by_dense(cache.nearest(vectors[0], [user_id], k))
            return self._resolve(collection, tenant, assistant_id, [user_id], ranked, k)

        return await self._call(run)

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
    ) -> list[MemoryHit]:
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        if limit <= 0 or not query.strip():
            return []
        vector: Vectors | None = None
        if mode == "lexical":
            collection, version = await self._open_versioned(tenant, assistant_id)
        else:
            (collection, version), vectors = await asyncio.gather(
                self._open_versioned(tenant, assistant_id), self.embedder.embed([query])
            )
            vector = vectors[0]
        if collection is None:
            return []
        cache = await self._cache(collection, tenant, assistant_id, version)
        scopes = _scopes(user_id)
        n = max(self.tuning.candidates, limit)

        def run() -> list[MemoryHit]:
            # Ranking and reading the winners from Chroma share one worker
            # thread: a hop less, which is a millisecond on a busy 2-core box.
            ranked = self._rank(cache, query, vector, scopes, n, mode)
            ranked = [r for r in ranked if r.score >= min_score]
            return self._resolve(collection, tenant, assistant_id, scopes, ranked, limit)

        return await self._call(run)

    def _rank(
        self,
        cache: _Cache,
        query: str,
        vector: Vectors | None,
        scopes: list[str],
        n: int,
        mode: str,
    ) -> list[Ranked]:
        """Candidates of the mode's sides, each with every signal, best first."""
        if mode == "dense" and vector is not None:
            return ranking.by_dense(cache.nearest(vector, scopes, n))
        if mode == "lexical" or vector is None:
            return ranking.by_lexical(cache.matching(query, scopes, n))
        return ranking.fuse(cache.candidates(query, vector, scopes, n), self.tuning)

    def _resolve(
        self,
        collection: Any,
        tenant: str,
        assistant_id: str,
        scopes: list[str],
        ranked: list[Ranked],
        limit: int,
    ) -> list[MemoryHit]:
        """The records of the best ``limit`` ranked ids, read from Chroma and
        checked there: a memory deleted, moved to another scope or of another
        tenant or assistant is skipped, whatever the cache said."""
        hits: list[MemoryHit] = []
        seen: set[str] = set()
        step = max(2 * limit, 20)
        for start in range(0, len(ranked), step):
            chunk = ranked[start : start + step]
            rows = collection.get(
                ids=[r.memory_id for r in chunk], include=["documents", "metadatas"]
            )
            found = {
                i: (d, m)
                for i, d, m in zip(rows["ids"], rows["documents"], rows["metadatas"], strict=True)
                if _belongs(m, tenant, assistant_id) and str(m.get("user_id", "")) in scopes
            }
            for r in chunk:
                if r.memory_id not in found:
                    continue
                record = _to_record(r.memory_id, *found[r.memory_id])
                key = ranking.text_key(record.text) if self.tuning.dedupe_text else r.memory_id
                if key in seen:
                    continue
                seen.add(key)
                hits.append(MemoryHit(record, r.score, r.dense, r.lexical))
                if len(hits) == limit:
                    return hits
        return hits

    # -- the search cache ----------------------------------------------------

    async def _cache(self, collection: Any, tenant: str, assistant_id: str, version: int) -> _Cache:
        """This collection's cache: built on first use, refreshed when
        another writer moved the version, rebuilt when older than
        ``cache_max_age`` or the collection was re-created."""
        name = collection.name
        with self._caches_lock:
            entry = self._caches.get(name)
            if entry is not None and self._fresh(entry, collection, version):
                self._caches.move_to_end(name)
                return entry
            lock = self._build_locks.setdefault(name, threading.Lock())
        return await self._call(self._refresh, collection, tenant, assistant_id, version, lock)

    def _fresh(self, entry: _Cache, collection: Any, version: int) -> bool:
        return (
            entry.collection_id == str(collection.id)
            and entry.version == version
            and time.monotonic() - entry.built < self._max_age
        )

    def _rows(self, collection: Any, where: dict[str, Any]) -> Iterator[tuple[str, str, Any, Any]]:
        """(id, document, metadata, embedding) of the matching records, by pages."""
        offset, page = 0, 2000
        while True:
            rows = collection.get(
                where=where,
                include=["documents", "metadatas", "embeddings"],
                limit=page,
                offset=offset,
            )
            yield from zip(
                rows["ids"], rows["documents"], rows["metadatas"], rows["embeddings"], strict=True
            )
            if len(rows["ids"]) < page:
                return
            offset += page

    def _refresh(
        self, collection: Any, tenant: str, assistant_id: str, version: int, lock: threading.Lock
    ) -> _Cache:
        with lock:
            with self._caches_lock:
                entry = self._caches.get(collection.name)
            if entry is not None and self._fresh(entry, collection, version):
                return entry
            began = _now_us()
            if (
                entry is None
                or entry.collection_id != str(collection.id)
                or time.monotonic() - entry.built >= self._max_age
            ):
                meta = collection.metadata or {}
                dim = int(meta.get("embedding_dim") or self.embedder.dim or 1)
                t = self.tuning
                entry = _Cache(
                    BM25Index(k1=t.k1, b=t.b, context_weight=t.context_weight),
                    VectorSet(dim),
                    str(collection.id),
                    version,
                    time.monotonic(),
                    began,
                )
                where: dict[str, Any] = _where(tenant, assistant_id)
            else:
                where = {"write_us": {"$gte": entry.refreshed_us - self._margin_us}}
            rows = list(self._rows(collection, where))
            with entry.lock:
                for i, d, m, e in rows:
                    if _belongs(m, tenant, assistant_id):
                        entry.put(i, m, d or "", e)
                entry.version = version
                entry.refreshed_us = began
            with self._caches_lock:
                self._caches[collection.name] = entry
                self._caches.move_to_end(collection.name)
                total = sum(len(e) for e in self._caches.values())
                while total > self._max_cached and len(self._caches) > 1:
                    _, dropped = self._caches.popitem(last=False)
                    total -= len(dropped)
            log.debug(
                "memory cache of %s: %d records (%d read)", collection.name, len(entry), len(rows)
            )
            return entry

    # -- re-embedding --------------------------------------------------------

    async def reindex(self, tenant: str, assistant_id: str) -> int:
        """Re-embed every memory of the assistant with the current embedder
        (into a new collection that then takes the old one's name); returns
        how many. Writes made to the assistant meanwhile may be lost: run it
        while Loom's writers are stopped or idle."""
        name = collection_name(tenant, assistant_id)
        old = await self._call(self._get_collection, tenant, assistant_id)
        if old is None:
            return 0
        rows = await self._call(old.get, include=["documents", "metadatas"])
        records = [
            _to_record(i, d, m)
            for i, d, m in zip(rows["ids"], rows["documents"], rows["metadatas"], strict=True)
        ]
        meta = dict(old.metadata or {})
        meta.update(
            embedding_model=self.embedder.model_name,
            loom_version=int(meta.get("loom_version", 0)) + 1,
        )
        temp = f"{name}-reindex-{secrets.token_hex(4)}"
        vectors = await self._vectors(records)
        if records:
            meta["embedding_dim"] = int(vectors.shape[1])
        fresh = await self._call(
            self._client.create_collection,
            temp,
            embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}},
            metadata=meta,
        )
        written = _now_us()
        for start in range(0, len(records), self._batch):
            chunk = records[start : start + self._batch]
            await self._call(
                fresh.upsert,
                ids=[r.memory_id for r in chunk],
                embeddings=vectors[start : start + len(chunk)],
                documents=[r.text for r in chunk],
                metadatas=[_to_metadata(r) | {"write_us": written} for r in chunk],
            )
        self._forget(name)
        await self._call(self._client.delete_collection, name)
        await self._call(fresh.modify, name=name)
        if self._versions is not None:
            await self._versions.bump(tenant, assistant_id)
        log.info(
            "re-embedded %d memories of %s with %s", len(records), name, meta["embedding_model"]
        )
        return len(records)

    async def assistants(self) -> list[tuple[str, str, str]]:
        """(tenant, assistant_id, embedding model) of every memory collection.

        A re-embedded copy left by a ``reindex`` that stopped between
        dropping the old collection and renaming the copy is renamed here,
        which finishes that reindex."""
        collections = await self._call(self._client.list_collections)
        names = {c.name for c in collections}
        out = []
        for c in collections:
            orphan = re.fullmatch(rf"({COLLECTION_PREFIX}[0-9a-f]{{40}})-reindex-[0-9a-f]+", c.name)
            if orphan and orphan.group(1) not in names:
                log.warning("finishing an interrupted reindex of %s", orphan.group(1))
                await self._call(c.modify, name=orphan.group(1))
                names.add(orphan.group(1))
            elif not re.fullmatch(rf"{COLLECTION_PREFIX}[0-9a-f]{{40}}", c.name):
                continue
            meta = c.metadata or {}
            out.append(
                (
                    str(meta.get("tenant", "")),
                    str(meta.get("assistant_id", "")),
                    str(meta.get("embedding_model", "")),
                )
            )
        return out

    async def close(self) -> None:
        """Forget this process's search caches and, if ``open_index`` made
        the client, close it."""
        with self._caches_lock:
            self._caches.clear()
        if self._owns_client:
            self._owns_client = False
            await asyncio.to_thread(_close_client, self._client)


async def reindex_all(index: ChromaMemoryIndex, *, force: bool = False) -> int:
    """Re-embed every assistant whose memories were embedded with another
    model than ``index.embedder`` (all of them with ``force``); returns how
    many memories were re-embedded. For ``python -m service memory reindex``."""
    total = 0
    for tenant, assistant_id, model in await index.assistants():
        if force or model != index.embedder.model_name:
            total += await index.reindex(tenant, assistant_id)
    return total


def _close_client(client: Any) -> None:
    """Release a chromadb client, and the connection pools of an HTTP client
    (its own and its admin client's), which chromadb 1.5.9 leaves open."""
    import httpx

    admin = getattr(client, "_admin_client", None)
    servers = [getattr(client, "_server", None), getattr(admin, "_server", None)]
    client.close()
    for server in servers:
        session = getattr(server, "_session", None)
        if isinstance(session, httpx.Client):
            session.close()


def open_index(
    data_dir: Path,
    chroma_url: str | None,
    embedder: Embedder,
    *,
    wrap_client: Callable[[Any], Any] | None = None,
    **options: Any,
) -> ChromaMemoryIndex:
    """The index over an embedded Chroma in ``data_dir/chroma``, or over the
    Chroma server at ``chroma_url`` (``http://host:port``); ``options`` go to
    ``ChromaMemoryIndex``, which closes the client in ``close()``.
    ``wrap_client`` may wrap the chromadb client first (tracing does). Chroma's
    own telemetry is turned off.

    Raises:
        ValueError: ``chroma_url`` is not an http(s) URL.
        Unavailable: no Chroma server answers at ``chroma_url``.
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if chroma_url:
        url = urlsplit(chroma_url)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError(f"LOOM_CHROMA_URL must be http(s)://host:port, got {chroma_url!r}")
        try:
            client: Any = chromadb.HttpClient(
                host=url.hostname,
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=settings,
            )
        except ValueError as exc:  # chromadb's word for "no server there"
            raise Unavailable(
                f"the memory store (Chroma) at {chroma_url} cannot be reached: {exc}"
            ) from exc
    else:
        path = Path(data_dir) / "chroma"
        path.mkdir(parents=True, exist_ok=True)
        client = chromadb.PersistentClient(path=str(path), settings=settings)
    if wrap_client is not None:
        client = wrap_client(client)
    return ChromaMemoryIndex(client, embedder, owns_client=True, **options)
