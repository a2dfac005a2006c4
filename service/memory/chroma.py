"""The chromadb client as the memory index uses it: Protocols of the calls
Loom makes, each call run in a worker thread (a lost server becomes
``Unavailable``), and opening and closing the client.

Chroma's client is synchronous, so every call goes through ``call``
(``asyncio.to_thread``), for the embedded ``PersistentClient`` and the
``HttpClient`` alike (one code path; the HTTP client pools connections).
chromadb itself is imported lazily: the CLI's other commands never load it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

from service.core.errors import Unavailable
from service.memory.embeddings import Vectors

if TYPE_CHECKING:
    from uuid import UUID

    import numpy.typing as npt
    from chromadb.api.collection_configuration import CreateCollectionConfiguration
    from chromadb.api.types import CollectionMetadata, GetResult, Include, Metadata, Where

__all__ = [
    "BATCH",
    "Client",
    "Collection",
    "call",
    "close_client",
    "create",
    "entries",
    "find",
    "open_client",
    "upsert",
    "with_embeddings",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")

BATCH = 1000  # records a Chroma call; 1.5.9 takes up to 5,461


class Collection(Protocol):
    """The calls Loom makes on a chromadb collection. ``open_client``
    returns chromadb's own client as a ``Client``, so mypy checks these
    Protocols against chromadb's classes (with chromadb's own types)."""

    @property
    def name(self) -> str: ...

    @property
    def id(self) -> UUID: ...

    @property
    def metadata(self) -> CollectionMetadata | None: ...

    def get(
        self,
        ids: list[str] | None = None,
        *,
        where: Where | None = None,
        limit: int | None = None,
        offset: int | None = None,
        include: Include = ...,
    ) -> GetResult: ...

    def add(self, ids: list[str], *, embeddings: Vectors, metadatas: list[Metadata]) -> None: ...

    def upsert(self, ids: list[str], *, embeddings: Vectors, metadatas: list[Metadata]) -> None: ...

    def delete(self, ids: list[str]) -> object: ...

    def count(self) -> int: ...

    def modify(
        self, name: str | None = None, metadata: CollectionMetadata | None = None
    ) -> None: ...


class Client(Protocol):
    """The calls Loom makes on a chromadb client (embedded or HTTP). Loom
    gives every vector itself: Chroma never embeds (``embedding_function``
    is None)."""

    def get_collection(self, name: str) -> Collection: ...

    def get_or_create_collection(
        self,
        name: str,
        *,
        configuration: CreateCollectionConfiguration,
        metadata: CollectionMetadata,
        embedding_function: None,
    ) -> Collection: ...

    def create_collection(
        self,
        name: str,
        *,
        configuration: CreateCollectionConfiguration,
        metadata: CollectionMetadata,
        embedding_function: None,
    ) -> Collection: ...

    def delete_collection(self, name: str) -> None: ...

    def list_collections(self) -> Sequence[Collection]: ...


@runtime_checkable
class _Closable(Protocol):
    # chromadb declares close() on its Client class, not on the ClientAPI
    # that its factories return.
    def close(self) -> None: ...


async def call(fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a Chroma call in a worker thread; a lost server becomes Unavailable."""
    import httpx

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except (httpx.TransportError, ConnectionError) as exc:
        raise Unavailable(
            f"the memory store (Chroma) cannot be reached ({type(exc).__name__})"
        ) from exc


def find(client: Client, name: str) -> Collection | None:
    """The collection of that name, or None (blocking: run it with ``call``)."""
    from chromadb.errors import NotFoundError

    try:
        return client.get_collection(name)
    except NotFoundError:
        return None


def create(
    client: Client, name: str, metadata: CollectionMetadata, *, exist_ok: bool = False
) -> Collection:
    """A new collection in cosine space, or with ``exist_ok`` the one of that
    name if there is one (blocking: run it with ``call``)."""
    make = client.get_or_create_collection if exist_ok else client.create_collection
    # 1.5.9 reads the space from ``configuration`` (``hnsw:space`` in the
    # metadata is the legacy form). Loom never searches Chroma's HNSW graph
    # (it ranks in its own caches, ``_cache.py``), yet Chroma builds it on
    # every write: a sparse one (16 candidates, 8 links, against 100 and 16)
    # made a write of 1,000 memories 3 to 6 times faster, a sparser one (8
    # and 4) took a fifth less CPU again.
    return make(
        name,
        configuration={"hnsw": {"space": "cosine", "ef_construction": 8, "max_neighbors": 4}},
        metadata=metadata,
        embedding_function=None,
    )


def entries(rows: GetResult) -> Iterator[tuple[str, str | None, Metadata | None]]:
    """(id, document, metadata) of each record of a ``get`` that included both."""
    return zip(rows["ids"], rows["documents"] or [], rows["metadatas"] or [], strict=True)


def with_embeddings(
    rows: GetResult,
) -> Iterator[tuple[str, str | None, Metadata | None, npt.ArrayLike]]:
    """(id, document, metadata, embedding) of each record of a ``get`` that
    included all three."""
    embeddings = rows["embeddings"]
    return zip(
        rows["ids"],
        rows["documents"] or [],
        rows["metadatas"] or [],
        [] if embeddings is None else embeddings,
        strict=True,
    )


async def upsert(
    collection: Collection,
    ids: Sequence[str],
    vectors: Vectors,
    metadatas: Sequence[Metadata],
    *,
    new: bool = False,
) -> None:
    """Write records in batches Chroma takes; the i-th of each sequence is
    one record's. ``new`` says that none of the ids is in the collection:
    they are added (Chroma's ``add`` skips the lookup of each id that its
    ``upsert`` makes; it would leave a record already there as it is)."""
    write = collection.add if new else collection.upsert
    for start in range(0, len(ids), BATCH):
        end = start + BATCH
        await call(
            write,
            list(ids[start:end]),
            embeddings=vectors[start:end],
            metadatas=list(metadatas[start:end]),
        )


def open_client(data_dir: Path, chroma_url: str | None) -> Client:
    """An embedded Chroma in ``data_dir/chroma``, or a client of the Chroma
    server at ``chroma_url`` (``http://host:port``); Chroma's own telemetry
    is turned off.

    Raises:
        ValueError: ``chroma_url`` is not an http(s) URL.
        Unavailable: no Chroma server answers at ``chroma_url``.
    """
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    settings = ChromaSettings(anonymized_telemetry=False)
    if not chroma_url:
        path = Path(data_dir) / "chroma"
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=settings)
    url = urlsplit(chroma_url)
    if url.scheme not in {"http", "https"} or not url.hostname:
        raise ValueError(f"LOOM_CHROMA_URL must be http(s)://host:port, got {chroma_url!r}")
    try:
        return chromadb.HttpClient(
            host=url.hostname,
            port=url.port or (443 if url.scheme == "https" else 8000),
            ssl=url.scheme == "https",
            settings=settings,
        )
    except ValueError as exc:  # chromadb's word for "no server there"
        raise Unavailable(
            f"the memory store (Chroma) at {chroma_url} cannot be reached: {exc}"
        ) from exc


def close_client(client: Client) -> None:
    """Release a chromadb client, and the connection pools of an HTTP client
    (its own and its admin client's), which chromadb 1.5.9 leaves open."""
    import httpx

    # Private attributes of chromadb 1.5.9's Client and FastAPI server.
    admin = getattr(client, "_admin_client", None)
    servers = [getattr(client, "_server", None), getattr(admin, "_server", None)]
    if isinstance(client, _Closable):
        client.close()
    for server in servers:
        session = getattr(server, "_session", None)
        if isinstance(session, httpx.Client):
            session.close()
