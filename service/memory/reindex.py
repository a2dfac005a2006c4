"""Re-embedding assistants' memories after a change of embedding model
(``python -m service memory reindex``), and finishing a reindex that
stopped half-way."""

from __future__ import annotations

import logging
import re
import secrets

from service.memory import chroma
from service.memory._codec import now_us, to_metadata, to_record
from service.memory.collection import COLLECTION_PREFIX, collection_name
from service.memory.index import ChromaMemoryIndex

__all__ = ["assistants", "reindex", "reindex_all"]

log = logging.getLogger(__name__)

_NAME = re.compile(rf"{COLLECTION_PREFIX}[0-9a-f]{{40}}")
_COPY = re.compile(rf"({COLLECTION_PREFIX}[0-9a-f]{{40}})-reindex-[0-9a-f]+")


async def reindex(index: ChromaMemoryIndex, tenant: str, assistant_id: str) -> int:
    """Re-embed every memory of the assistant with ``index.embedder`` (into
    a new collection that then takes the old one's name); returns how many.
    Writes made to the assistant meanwhile may be lost: run it while Loom's
    writers are stopped or idle.

    Raises:
        Unavailable: the Chroma server cannot be reached.
    """
    name = collection_name(tenant, assistant_id)
    old = await chroma.call(chroma.find, index.client, name)
    if old is None:
        return 0
    rows = await chroma.call(old.get, include=["documents", "metadatas"])
    records = [to_record(i, d, m) for i, d, m in chroma.entries(rows)]
    meta = dict(old.metadata or {})
    meta.update(
        embedding_model=index.embedder.model_name,
        loom_version=int(meta.get("loom_version", 0)) + 1,
    )
    vectors = await index.embed(records)
    if records:
        meta["embedding_dim"] = int(vectors.shape[1])
    temp = f"{name}-reindex-{secrets.token_hex(4)}"
    fresh = await chroma.call(chroma.create, index.client, temp, meta)
    written = now_us()
    await chroma.upsert(
        fresh,
        [r.memory_id for r in records],
        vectors,
        [r.text for r in records],
        [to_metadata(r) | {"write_us": written} for r in records],
    )
    index.forget(tenant, assistant_id)
    await chroma.call(index.client.delete_collection, name)
    await chroma.call(fresh.modify, name=name)
    if index.versions is not None:
        await index.versions.bump(tenant, assistant_id)
    log.info("re-embedded %d memories of %s with %s", len(records), name, meta["embedding_model"])
    return len(records)


async def assistants(index: ChromaMemoryIndex) -> list[tuple[str, str, str]]:
    """(tenant, assistant_id, embedding model) of every memory collection.

    A re-embedded copy left by a ``reindex`` that stopped between dropping
    the old collection and renaming the copy is renamed here, which
    finishes that reindex."""
    collections = await chroma.call(index.client.list_collections)
    names = {c.name for c in collections}
    out = []
    for c in collections:
        copy = _COPY.fullmatch(c.name)
        if copy and copy.group(1) not in names:
            log.warning("finishing an interrupted reindex of %s", copy.group(1))
            await chroma.call(c.modify, name=copy.group(1))
            names.add(copy.group(1))
        elif not _NAME.fullmatch(c.name):
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


async def reindex_all(index: ChromaMemoryIndex, *, force: bool = False) -> int:
    """Re-embed every assistant whose memories were embedded with another
    model than ``index.embedder`` (all of them with ``force``); returns how
    many memories were re-embedded."""
    total = 0
    for tenant, assistant_id, model in await assistants(index):
        if force or model != index.embedder.model_name:
            total += await reindex(index, tenant, assistant_id)
    return total
