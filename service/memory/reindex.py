"""Re-embedding assistants' memories after a change of embedding model
(``python -m service memory reindex``), resuming one that was interrupted.

An assistant's memories are re-embedded, by batches, into a copy of its
collection named after the new model (``<name>-reindex-<8 hex>``), which
then takes the old one's name. An interrupted run leaves the copy: the
next run keeps what it holds unchanged (same text and metadata as the
original), drops what the original no longer has, and embeds the rest;
a run that stopped between dropping the original and renaming the copy
is finished by ``assistants`` (the copy takes the name).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping

from service.memory import chroma
from service.memory._codec import now_us, to_metadata, to_record
from service.memory.collection import COLLECTION_PREFIX, collection_name
from service.memory.index import ChromaMemoryIndex
from service.memory.ports import MemoryRecord

__all__ = ["assistants", "reindex", "reindex_all", "stale_assistants"]

log = logging.getLogger(__name__)

_NAME = re.compile(rf"{COLLECTION_PREFIX}[0-9a-f]{{40}}")
_COPY = re.compile(rf"({COLLECTION_PREFIX}[0-9a-f]{{40}})-reindex-[0-9a-f]+")
BATCH = 256  # memories embedded and written at once

Advance = Callable[[int], None]


def _ignore(_: int) -> None:
    return None


def _copy_name(name: str, model: str) -> str:
    return f"{name}-reindex-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def _comparable(meta: Mapping[str, object] | None) -> dict[str, object]:
    """Metadata as a copy is compared with its original (``write_us`` aside)."""
    return {k: v for k, v in (meta or {}).items() if k != "write_us"}


async def _left_to_embed(
    copy: chroma.Collection, records: list[MemoryRecord]
) -> list[MemoryRecord]:
    """The records an earlier, interrupted run did not copy unchanged; what
    the copy holds that the original no longer has is deleted from it."""
    held = await chroma.call(copy.get, include=["metadatas"])
    by_id = {r.memory_id: r for r in records}
    # The metadata holds the text (``_codec``): a copy an older Loom made,
    # with the text as the document, is made again.
    done = {
        i
        for i, meta in zip(held["ids"], held["metadatas"] or [], strict=True)
        if i in by_id and _comparable(meta) == _comparable(to_metadata(by_id[i]))
    }
    gone = [i for i in held["ids"] if i not in by_id]
    for start in range(0, len(gone), chroma.BATCH):
        await chroma.call(copy.delete, gone[start : start + chroma.BATCH])
    return [r for r in records if r.memory_id not in done]


async def reindex(
    index: ChromaMemoryIndex,
    tenant: str,
    assistant_id: str,
    *,
    advance: Advance = _ignore,
    batch: int = BATCH,
) -> int:
    """Re-embed every memory of the assistant with ``index.embedder``, by
    batches of ``batch``; returns how many it holds. ``advance`` is told of
    each batch done (and first of what an interrupted run had done).
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
    model = index.embedder.model_name
    meta.update(embedding_model=model, loom_version=int(meta.get("loom_version", 0)) + 1)
    if index.embedder.dim:
        meta["embedding_dim"] = index.embedder.dim
    copy = await chroma.call(
        chroma.create, index.client, _copy_name(name, model), meta, exist_ok=True
    )
    todo = await _left_to_embed(copy, records)
    advance(len(records) - len(todo))
    for start in range(0, len(todo), batch):
        part = todo[start : start + batch]
        vectors = await index.embed(part)
        written = now_us()
        await chroma.upsert(
            copy,
            [r.memory_id for r in part],
            vectors,
            [to_metadata(r) | {"write_us": written} for r in part],
        )
        advance(len(part))
    index.forget(tenant, assistant_id)
    await chroma.call(index.client.delete_collection, name)
    await chroma.call(copy.modify, name=name)
    if index.versions is not None:
        await index.versions.bump(tenant, assistant_id)
    log.info("re-embedded %d memories of %s with %s", len(records), name, model)
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


async def stale_assistants(
    index: ChromaMemoryIndex, *, force: bool = False
) -> list[tuple[str, str, int]]:
    """(tenant, assistant_id, memories) of every assistant whose memories
    were embedded with another model than ``index.embedder`` (all of them
    with ``force``)."""
    out = []
    for tenant, assistant_id, model in await assistants(index):
        if force or model != index.embedder.model_name:
            out.append((tenant, assistant_id, await index.count(tenant, assistant_id)))
    return out


async def reindex_all(
    index: ChromaMemoryIndex, *, force: bool = False, advance: Advance = _ignore
) -> int:
    """Re-embed every assistant ``stale_assistants`` names; returns how
    many memories were re-embedded."""
    total = 0
    for tenant, assistant_id, _ in await stale_assistants(index, force=force):
        total += await reindex(index, tenant, assistant_id, advance=advance)
    return total
