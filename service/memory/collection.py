"""An assistant's Chroma collection: its name, opening it checked against
the embedder, and its version (the write counter searches compare their
caches with).

One collection per (tenant, assistant), named ``loom-mem-`` + the first 40
hex digits of sha256(tenant, assistant id), so any id is a valid name, two
tenants never share a collection, and dropping an assistant is one
``delete_collection``. Its metadata records ``tenant``, ``assistant_id``,
``embedding_model``, ``embedding_dim`` and ``loom_version``. A collection
keeps the model it was built with; opening it for another embedder raises
``EmbeddingMismatch``.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from service.core.errors import FailedPrecondition
from service.memory import chroma
from service.memory.embeddings import Embedder
from service.memory.ports import VersionSource

__all__ = ["COLLECTION_PREFIX", "Collections", "EmbeddingMismatch", "collection_name"]

COLLECTION_PREFIX = "loom-mem-"


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


class _Handles:
    """The collection handle of each recently searched assistant, with the
    shared version it was read at: while the version stands still (every
    write, reindex and drop moves it) a search reuses the handle, which
    saves a Chroma round trip. Used on the event loop only."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._handles: OrderedDict[str, tuple[chroma.Collection, int]] = OrderedDict()

    def get(self, name: str, version: int) -> chroma.Collection | None:
        """The handle read at ``version``, or None."""
        known = self._handles.get(name)
        return known[0] if known is not None and known[1] == version else None

    def put(self, name: str, collection: chroma.Collection, version: int) -> None:
        self._handles[name] = (collection, version)
        self._handles.move_to_end(name)
        while len(self._handles) > self._size:
            self._handles.popitem(last=False)

    def forget(self, name: str) -> None:
        self._handles.pop(name, None)


class Collections:
    """The memory collections of one chromadb client, for one embedder.

    The version of a collection is the ``VersionSource``'s counter when there
    is one, else ``loom_version`` in the collection's metadata (a
    read-modify-write that two replicas writing at the same instant can both
    miss). Every call may raise ``Unavailable`` (Chroma cannot be reached).
    """

    def __init__(
        self, client: chroma.Client, embedder: Embedder, versions: VersionSource | None
    ) -> None:
        self.client = client
        self.versions = versions
        self._embedder = embedder
        self._handles = _Handles()

    async def find(self, tenant: str, assistant_id: str) -> chroma.Collection | None:
        """The collection, unchecked (for reads that need no vectors), or None."""
        return await chroma.call(chroma.find, self.client, collection_name(tenant, assistant_id))

    async def open(self, tenant: str, assistant_id: str) -> chroma.Collection | None:
        """The collection (fresh metadata), checked against the embedder, or None.

        Raises:
            EmbeddingMismatch: it was embedded with another model.
        """
        collection = await self.find(tenant, assistant_id)
        if collection is not None:
            self._check(collection, tenant, assistant_id)
        return collection

    async def create(self, tenant: str, assistant_id: str, dim: int) -> chroma.Collection:
        """The collection, made for the embedder's ``dim``-long vectors if
        there is none yet, checked against the embedder."""
        metadata = {
            "tenant": tenant,
            "assistant_id": assistant_id,
            "embedding_model": self._embedder.model_name,
            "embedding_dim": dim,
            "loom_version": 0,
        }
        name = collection_name(tenant, assistant_id)
        collection = await chroma.call(chroma.create, self.client, name, metadata, exist_ok=True)
        self._check(collection, tenant, assistant_id)
        return collection

    async def open_versioned(
        self, tenant: str, assistant_id: str
    ) -> tuple[chroma.Collection | None, int]:
        """The collection checked against the embedder, and its version, for
        a search. With a ``VersionSource`` the collection handle is reused
        while the version stands still (``_Handles``)."""
        if self.versions is None:
            collection = await self.open(tenant, assistant_id)
            if collection is None:
                return None, 0
            return collection, await self.version(collection, tenant, assistant_id)
        version = await self.versions.current(tenant, assistant_id)
        name = collection_name(tenant, assistant_id)
        collection = self._handles.get(name, version)
        if collection is None:
            collection = await self.find(tenant, assistant_id)
            if collection is None:
                return None, version
            self._handles.put(name, collection, version)
        self._check(collection, tenant, assistant_id)
        return collection, version

    def forget(self, tenant: str, assistant_id: str) -> None:
        """Drop the handle kept of the collection."""
        self._handles.forget(collection_name(tenant, assistant_id))

    async def version(self, collection: chroma.Collection, tenant: str, assistant_id: str) -> int:
        """The collection's version."""
        if self.versions is not None:
            return await self.versions.current(tenant, assistant_id)
        return int((collection.metadata or {}).get("loom_version", 0))

    async def bump(self, tenant: str, assistant_id: str) -> int:
        """Count a write to the collection; its new version."""
        if self.versions is not None:
            return await self.versions.bump(tenant, assistant_id)
        return await chroma.call(self._bump_metadata, tenant, assistant_id)

    def _bump_metadata(self, tenant: str, assistant_id: str) -> int:
        collection = chroma.find(self.client, collection_name(tenant, assistant_id))
        if collection is None:
            return 0
        meta = dict(collection.metadata or {})
        meta["loom_version"] = int(meta.get("loom_version", 0)) + 1
        collection.modify(metadata=meta)
        return int(meta["loom_version"])

    def _check(self, collection: chroma.Collection, tenant: str, assistant_id: str) -> None:
        stored = (collection.metadata or {}).get("embedding_model")
        if stored is not None and stored != self._embedder.model_name:
            raise EmbeddingMismatch(tenant, assistant_id, str(stored), self._embedder.model_name)
