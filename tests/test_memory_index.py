"""The memory index against real Chroma: embedded (PersistentClient in a
temporary folder) and a ``chroma run`` server, every behaviour in both."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.core.errors import Unavailable
from service.memory._codec import now_us, to_metadata
from service.memory.collection import EmbeddingMismatch, collection_name
from service.memory.embeddings import OnnxMiniLM, Vectors
from service.memory.filters import parse_memory_filter
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.ports import MemoryRecord
from service.memory.reindex import reindex, reindex_all
from tests.conftest import eventually
from tests.support.chroma import ChromaServer

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

MODES = ("hybrid", "dense", "lexical")


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[ChromaServer]:
    server = ChromaServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "server"])
def where(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str | None]:
    """(data_dir, chroma_url) of one Chroma: a fresh embedded one, or the server."""
    if request.param == "server":
        server: ChromaServer = request.getfixturevalue("chroma_server")
        return tmp_path_factory.mktemp("unused"), server.url
    return tmp_path_factory.mktemp("chroma"), None


@pytest.fixture
async def index(
    where: tuple[Path, str | None], embedder: OnnxMiniLM
) -> AsyncIterator[ChromaMemoryIndex]:
    idx = open_index(where[0], where[1], embedder)
    yield idx
    await idx.close()


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def rec(
    tenant: str,
    memory_id: str,
    text: str,
    *,
    user: str = "",
    assistant: str = "asst_1",
    thread: str = "",
    minute: int = 0,
    context: str = "",
    **metadata: str,
) -> MemoryRecord:
    return MemoryRecord(
        memory_id=memory_id,
        tenant=tenant,
        assistant_id=assistant,
        user_id=user,
        text=text,
        kind="fact",
        source_thread_id=thread,
        create_time=T0 + timedelta(minutes=minute),
        update_time=T0 + timedelta(minutes=minute),
        metadata=dict(metadata),
        context=context,
    )


async def ids_of(
    index: ChromaMemoryIndex,
    tenant: str,
    query: str,
    *,
    user: str = "",
    assistant: str = "asst_1",
    mode: str = "hybrid",
    limit: int = 10,
    min_score: float = 0.0,
) -> list[str]:
    hits = await index.search(
        tenant, assistant, query, user_id=user, limit=limit, mode=mode, min_score=min_score
    )
    return [h.record.memory_id for h in hits]


PETS = [
    ("m_cat", "The user has a cat called Miso.", "alice"),
    ("m_dog", "The user walks a dog named Rex every morning.", "bob"),
    ("m_peanut", "The user is allergic to peanuts.", "alice"),
    ("m_policy", "Refunds are accepted within thirty days of purchase.", ""),
]


async def test_upsert_get_list_count(index: ChromaMemoryIndex, tenant: str) -> None:
    records = [
        rec(tenant, mid, text, user=user, minute=i, source="test")
        for i, (mid, text, user) in enumerate(PETS)
    ]
    await index.upsert(records)
    assert await index.count(tenant, "asst_1") == 4
    got = await index.get(tenant, "asst_1", "m_cat")
    assert got == records[0]
    assert await index.get(tenant, "asst_1", "missing") is None
    assert await index.get(tenant, "asst_2", "m_cat") is None
    assert await index.get("other-tenant", "asst_1", "m_cat") is None

    everything = await index.list_records(tenant, "asst_1", None, 10, 0)
    assert [r.memory_id for r in everything] == ["m_cat", "m_dog", "m_peanut", "m_policy"]
    assert [r.memory_id for r in await index.list_records(tenant, "asst_1", None, 2, 1)] == [
        "m_dog",
        "m_peanut",
    ]
    assert [r.memory_id for r in await index.list_records(tenant, "asst_1", "alice", 10, 0)] == [
        "m_cat",
        "m_peanut",
    ]
    wide = await index.list_records(tenant, "asst_1", "", 10, 0)
    assert [r.memory_id for r in wide] == ["m_policy"]

    # Replacing by id re-embeds: the new words find it, the old ones do not.
    await index.upsert([rec(tenant, "m_cat", "The user has a parrot called Kiwi.", user="alice")])
    assert await index.count(tenant, "asst_1") == 4
    assert (await index.get(tenant, "asst_1", "m_cat")).text.startswith("The user has a parrot")  # type: ignore[union-attr]
    for mode in MODES:
        assert (await ids_of(index, tenant, "parrot Kiwi", user="alice", mode=mode))[0] == "m_cat"
    assert "m_cat" not in await ids_of(index, tenant, "Miso", user="alice", mode="lexical")


async def test_scope_isolation(index: ChromaMemoryIndex, tenant: str) -> None:
    other = f"{tenant}-other"
    same_text = "The user's favourite colour is teal."
    await index.upsert(
        [
            rec(tenant, "a1", same_text, user="alice"),
            rec(tenant, "b1", same_text + " Also blue.", user="bob"),
            rec(tenant, "w1", "Everyone: the shop's favourite colour is teal.", user=""),
            rec(tenant, "x1", same_text, user="alice", assistant="asst_2"),
            rec(other, "o1", same_text, user="alice"),
        ]
    )
    for mode in MODES:
        alice = await ids_of(index, tenant, "favourite colour teal", user="alice", mode=mode)
        bob = await ids_of(index, tenant, "favourite colour teal", user="bob", mode=mode)
        nobody = await ids_of(index, tenant, "favourite colour teal", user="", mode=mode)
        assert sorted(alice) == ["a1", "w1"], mode
        assert sorted(bob) == ["b1", "w1"], mode
        assert nobody == ["w1"], mode
        assert await ids_of(index, other, "favourite colour teal", user="alice", mode=mode) == [
            "o1"
        ]
        assert await ids_of(
            index, tenant, "favourite colour teal", user="alice", assistant="asst_2", mode=mode
        ) == ["x1"]
    near = await index.nearest(tenant, "asst_1", "alice", same_text, 5)
    assert [h.record.memory_id for h in near] == ["a1"]
    assert near[0].dense == pytest.approx(1.0, abs=1e-3)
    near = await index.nearest(tenant, "asst_1", "", same_text, 5)
    assert [h.record.memory_id for h in near] == ["w1"]
    assert await index.count(tenant, "asst_1") == 3
    assert await index.count(other, "asst_1") == 1


async def test_read_your_writes_and_deletes(index: ChromaMemoryIndex, tenant: str) -> None:
    # The first search builds the caches; every later write must show at once.
    assert await ids_of(index, tenant, "anything") == []
    await index.upsert([rec(tenant, "m_policy", PETS[3][1])])
    assert await ids_of(index, tenant, "refund window") == ["m_policy"]
    for i, (mid, text, user) in enumerate(PETS[:3]):
        await index.upsert([rec(tenant, mid, text, user=user, thread=f"th{i % 2}")])
        for mode in MODES:
            assert mid in await ids_of(index, tenant, text, user=user, mode=mode), mode

    assert await index.delete(tenant, "asst_1", ["m_cat", "nope"]) == 1
    assert await index.delete(f"{tenant}-x", "asst_1", ["m_dog"]) == 0
    assert await index.delete_where(tenant, "asst_1", source_thread_id="th1") == 1  # m_dog
    assert await index.delete_where(tenant, "asst_1", user_id="nobody") == 0
    with pytest.raises(ValueError, match="needs user_id or source_thread_id"):
        await index.delete_where(tenant, "asst_1")
    for mid, text, user in PETS[:2]:
        for mode in MODES:
            assert mid not in await ids_of(index, tenant, text, user=user, mode=mode), mode
        assert await index.get(tenant, "asst_1", mid) is None
    assert [r.memory_id for r in await index.list_records(tenant, "asst_1", None, 10, 0)] == [
        "m_peanut",
        "m_policy",
    ]
    assert await index.delete_where(tenant, "asst_1", user_id="alice") == 1
    assert await ids_of(index, tenant, "peanuts allergy", user="alice", mode="lexical") == []

    await index.drop_assistant(tenant, "asst_1")
    assert await index.count(tenant, "asst_1") == 0
    assert await index.list_records(tenant, "asst_1", None, 10, 0) == []
    for mode in MODES:
        assert await ids_of(index, tenant, "refund window", mode=mode) == []
    await index.drop_assistant(tenant, "asst_1")  # a second drop is a no-op


async def test_a_rewrite_replaces_the_whole_record(index: ChromaMemoryIndex, tenant: str) -> None:
    # Chroma merges an upsert's metadata into the stored record's: keys the
    # new version lacks must still go.
    moment = T0 + timedelta(days=1)
    first = rec(tenant, "m_pin", "The door code is 1234.", user="alice", source="crm", team="a")
    await index.upsert([replace(first, invalidate_time=moment, superseded_by="m_new")])
    assert "m_pin" not in await ids_of(index, tenant, "door code", user="alice")
    await index.upsert([replace(first, metadata={"source": "crm"}, version=2)])
    got = await index.get(tenant, "asst_1", "m_pin")
    assert got is not None
    assert got.metadata == {"source": "crm"}
    assert (got.invalidate_time, got.superseded_by, got.version) == (None, "", 2)
    assert await ids_of(index, tenant, "door code", user="alice") == ["m_pin"]


async def test_a_collection_is_sparse_and_default_fields_are_not_stored(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    plain = rec(tenant, "m_plain", "The user likes tea.", user="alice")
    full = replace(
        rec(tenant, "m_full", "The user likes coffee.", user="alice", thread="thread_1", c="d"),
        context="before\nafter",
        source_message_id="msg_1",
        version=3,
        change="updated",
        operation_id="memop_1",
        change_thread_id="thread_2",
        change_message_id="msg_2",
        supersedes="m_old",
    )
    await index.upsert([plain, full])
    collection = index.client.get_collection(collection_name(tenant, "asst_1"))
    # Loom never searches Chroma's graph: a sparse one is cheaper to write.
    hnsw = collection.configuration_json["hnsw"]
    assert (hnsw["space"], hnsw["ef_construction"], hnsw["max_neighbors"]) == ("cosine", 8, 4)
    stored = collection.get(ids=["m_plain"], include=["metadatas", "documents"])
    assert stored["metadatas"] is not None
    # Never updated: no update_us. The text is metadata; no document for
    # Chroma's full-text index, which Loom never searches.
    assert set(stored["metadatas"][0]) == {
        "text", "tenant", "assistant_id", "user_id", "kind", "create_us", "write_us"
    }  # fmt: skip
    assert stored["documents"] == [None]
    assert await index.get(tenant, "asst_1", "m_plain") == plain
    assert await index.get(tenant, "asst_1", "m_full") == full
    # Back to the defaults: the keys the full version had go.
    await index.upsert([replace(plain, memory_id="m_full")])
    assert await index.get(tenant, "asst_1", "m_full") == replace(plain, memory_id="m_full")


async def test_a_collection_made_with_the_default_graph_is_still_written(
    index: ChromaMemoryIndex, tenant: str
) -> None:
    # As a Loom before the sparse graph made it: opened and written as it is.
    index.client.create_collection(
        collection_name(tenant, "asst_old"),
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"tenant": tenant, "assistant_id": "asst_old", "loom_version": 0},
        embedding_function=None,
    )
    record = rec(tenant, "m_old", "The user likes tea.", user="alice", assistant="asst_old")
    await index.upsert([record])
    assert await index.get(tenant, "asst_old", "m_old") == record
    assert await ids_of(index, tenant, "tea", user="alice", assistant="asst_old") == ["m_old"]


async def test_records_with_the_text_as_document_still_read_right(
    where: tuple[Path, str | None], embedder: OnnxMiniLM, tenant: str
) -> None:
    index = open_index(where[0], where[1], embedder)
    # As a Loom before the text moved to the metadata wrote them: the text
    # as the document, update_us always stored.
    await index.upsert([rec(tenant, "m_new", "The user likes tea.", user="alice")])
    olds = [
        replace(rec(tenant, "m_cat", PETS[0][1], user="alice"), update_time=T0 + timedelta(1)),
        rec(tenant, "m_dog", PETS[1][1], user="alice"),
    ]
    index.client.get_collection(collection_name(tenant, "asst_1")).add(
        [r.memory_id for r in olds],
        embeddings=await index.embed(olds),
        documents=[r.text for r in olds],
        metadatas=[
            {k: v for k, v in to_metadata(r).items() if k != "text"}
            | {"update_us": round((r.update_time or T0).timestamp() * 1e6), "write_us": now_us()}
            for r in olds
        ],
    )
    assert await index.get_many(tenant, "asst_1", ["m_cat", "m_dog"]) == {
        r.memory_id: r for r in olds
    }
    listed = await index.list_records(tenant, "asst_1", "alice", 10, 0)
    assert listed == [*olds, rec(tenant, "m_new", "The user likes tea.", user="alice")]
    assert (await ids_of(index, tenant, "cat Miso", user="alice"))[0] == "m_cat"
    assert await ids_of(index, tenant, "Miso", user="alice", mode="lexical") == ["m_cat"]
    later = parse_memory_filter('update_time > "2026-01-01T12:00:00Z"')
    hits = await index.search(tenant, "asst_1", "cat", user_id="alice", limit=9, matching=later)
    assert [h.record.memory_id for h in hits] == ["m_cat"]
    # Rewritten, the text moves to the metadata and wins over the stale document.
    parrot = replace(olds[0], text="The user's parrot is called Kiwi.", version=2)
    await index.upsert([parrot])
    assert await index.get(tenant, "asst_1", "m_cat") == parrot
    assert await ids_of(index, tenant, "Miso", user="alice", mode="lexical") == []
    assert await ids_of(index, tenant, "parrot Kiwi", user="alice", mode="lexical") == ["m_cat"]
    # A reindex copies every record, the text with it.
    new = open_index(where[0], where[1], Renamed(embedder, "test-model-v2"))
    assert await reindex(new, tenant, "asst_1") == 3
    assert await new.get_many(tenant, "asst_1", ["m_cat", "m_dog"]) == {
        "m_cat": parrot,
        "m_dog": olds[1],
    }
    assert await ids_of(new, tenant, "dog Rex", user="alice", mode="lexical") == ["m_dog"]
    await index.close()
    await new.close()


class Counters:
    """A shared write counter per assistant, as MongoDB backs it in Loom."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    async def current(self, tenant: str, assistant_id: str) -> int:
        return self.values.get((tenant, assistant_id), 0)

    async def bump(self, tenant: str, assistant_id: str) -> int:
        key = (tenant, assistant_id)
        self.values[key] = self.values.get(key, 0) + 1
        return self.values[key]


@pytest.mark.parametrize("versions", ["collection metadata", "VersionSource"])
async def test_other_replica_writes_are_seen(
    where: tuple[Path, str | None], embedder: OnnxMiniLM, tenant: str, versions: str
) -> None:
    """Two indexes over one Chroma stand for two Loom replicas: what one
    writes or deletes, the other's warm caches reflect on its next search."""
    shared = Counters() if versions == "VersionSource" else None
    first = open_index(where[0], where[1], embedder, versions=shared)
    second = open_index(where[0], where[1], embedder, versions=shared)
    await first.upsert([rec(tenant, "m_policy", PETS[3][1])])
    assert await ids_of(first, tenant, "refund") == ["m_policy"]
    assert await ids_of(second, tenant, "refund") == ["m_policy"]
    await second.upsert([rec(tenant, "m_cat", PETS[0][1], user="alice")])
    await second.delete(tenant, "asst_1", ["m_policy"])
    for mode in MODES:
        assert await ids_of(first, tenant, "cat Miso", user="alice", mode=mode) == ["m_cat"]
        assert await ids_of(first, tenant, "refund", mode=mode) == []
    await second.upsert([rec(tenant, "m_cat", "The user has a parrot.", user="alice")])
    hits = await first.search(tenant, "asst_1", "parrot", user_id="alice", limit=5)
    assert [h.record.text for h in hits] == ["The user has a parrot."]
    await second.drop_assistant(tenant, "asst_1")
    assert await ids_of(first, tenant, "parrot", user="alice") == []
    await second.upsert([rec(tenant, "m_new", "The user now has a hamster.", user="alice")])
    assert await ids_of(first, tenant, "hamster", user="alice") == ["m_new"]
    await first.close()
    await second.close()


async def test_search_caches_are_bounded_by_bytes(
    tmp_path: Path, embedder: OnnxMiniLM, tenant: str
) -> None:
    """Past ``max_cached_bytes`` (LOOM_MEMORY_CACHE_MB), the least recently
    searched assistant's cache goes; searching it again rebuilds it."""
    records = [rec(tenant, m, text, user=user) for m, text, user in PETS]
    unbounded = open_index(tmp_path / "a", None, embedder)
    try:
        await unbounded.upsert(records)
        assert await ids_of(unbounded, tenant, "refund") == ["m_policy"]
        one = unbounded.cached_bytes()
    finally:
        await unbounded.close()
    assert one > 0
    bounded = open_index(tmp_path / "b", None, embedder, max_cached_bytes=one * 3 // 2)
    try:
        for assistant in ("asst_1", "asst_2"):
            await bounded.upsert([replace(r, assistant_id=assistant) for r in records])
        for assistant in ("asst_1", "asst_2", "asst_1"):
            assert await ids_of(bounded, tenant, "refund", assistant=assistant) == ["m_policy"]
            assert bounded.cached_bytes() == one  # the other assistant's cache went
    finally:
        await bounded.close()


async def test_relevance_floor_and_scores(index: ChromaMemoryIndex, tenant: str) -> None:
    await index.upsert([rec(tenant, mid, text, user=user) for mid, text, user in PETS])
    hits = await index.search(
        tenant, "asst_1", "Is the user allergic to peanuts?", user_id="alice", limit=10
    )
    assert hits[0].record.memory_id == "m_peanut"
    assert hits[0].dense is not None
    assert hits[0].lexical is not None
    assert all(0.0 <= h.score < 1.0 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    floor = hits[0].score - 1e-6
    assert await ids_of(
        index, tenant, "Is the user allergic to peanuts?", user="alice", min_score=floor
    ) == ["m_peanut"]
    # A question about nothing stored clears no sensible floor.
    assert (
        await ids_of(
            index, tenant, "quantum chromodynamics lecture schedule", user="alice", min_score=0.3
        )
        == []
    )
    lexical = await index.search(
        tenant, "asst_1", "peanuts", user_id="alice", limit=10, mode="lexical"
    )
    assert [h.record.memory_id for h in lexical] == ["m_peanut"]
    assert lexical[0].dense is None
    assert lexical[0].lexical is not None
    with pytest.raises(ValueError, match="unknown search mode"):
        await index.search(tenant, "asst_1", "x", user_id="", limit=1, mode="fuzzy")
    assert await index.search(tenant, "asst_1", "  ", user_id="", limit=5) == []


async def test_duplicates_and_context(index: ChromaMemoryIndex, tenant: str) -> None:
    await index.upsert(
        [
            rec(tenant, "d1", "The user likes jazz."),
            rec(tenant, "d2", "the user  likes JAZZ."),
            rec(tenant, "c1", "Yes, it was wonderful!", context="Did you enjoy the Lisbon trip?"),
            rec(tenant, "j3", "Jazz records fill the user's shelves."),
        ]
    )
    hits = await index.search(tenant, "asst_1", "jazz", user_id="", limit=10)
    assert [h.record.memory_id for h in hits].count("d1") + [
        h.record.memory_id for h in hits
    ].count("d2") == 1
    # The folded twin still leaves room for the next best: the search reads
    # on past the first ``limit`` ids when one of them is skipped.
    found = [
        h.record.memory_id
        for h in await index.search(tenant, "asst_1", "jazz", user_id="", limit=2)
    ]
    assert len(found) == 2
    assert "j3" in found
    # The context finds a memory whose own words would not.
    hits = await index.search(tenant, "asst_1", "Lisbon trip", user_id="", limit=1)
    assert hits[0].record.memory_id == "c1"
    assert hits[0].record.context == "Did you enjoy the Lisbon trip?"


class Renamed:
    """The same vectors under another model name: stands for a new model."""

    def __init__(self, inner: OnnxMiniLM, name: str) -> None:
        self._inner = inner
        self._name = name

    @property
    def model_name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._inner.dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return await self._inner.embed(texts)


async def test_mixed_vector_spaces_refused_and_reindex(
    where: tuple[Path, str | None], embedder: OnnxMiniLM, tenant: str
) -> None:
    old = open_index(where[0], where[1], embedder)
    await old.upsert([rec(tenant, mid, text, user=user) for mid, text, user in PETS])
    await old.upsert([rec(tenant, "z1", "Another assistant's memory.", assistant="asst_9")])
    new = open_index(where[0], where[1], Renamed(embedder, "test-model-v2"))
    for call in (
        new.search(tenant, "asst_1", "cat", user_id="alice", limit=3),
        new.nearest(tenant, "asst_1", "alice", "cat", 3),
        new.upsert([rec(tenant, "m_new", "A new fact.")]),
    ):
        with pytest.raises(EmbeddingMismatch, match="python -m service memory reindex"):
            await call
    # Reads that need no vectors still work, so memories can be listed and deleted.
    assert await new.count(tenant, "asst_1") == 4
    assert (await new.get(tenant, "asst_1", "m_cat")) is not None

    assert await reindex(new, tenant, "asst_1") == 4
    assert (await ids_of(new, tenant, "cat Miso", user="alice"))[0] == "m_cat"
    with pytest.raises(EmbeddingMismatch):
        await old.search(tenant, "asst_1", "cat", user_id="alice", limit=3)
    assert (await new.get(tenant, "asst_1", "m_cat")) == rec(
        tenant, "m_cat", PETS[0][1], user="alice"
    )
    # reindex_all re-embeds what is not in the current model (asst_9 here,
    # and whatever other tests left in a shared server), not asst_1 again.
    assert await reindex_all(new) >= 1
    assert await ids_of(new, tenant, "another memory", assistant="asst_9") == ["z1"]
    # A reindex that stopped after dropping the old collection is finished
    # by the next reindex_all (which renames the re-embedded copy back).
    name = collection_name(tenant, "asst_1")
    new.client.get_collection(name).modify(name=f"{name}-reindex-0badf00d")
    assert await new.count(tenant, "asst_1") == 0
    await reindex_all(new)
    assert await new.count(tenant, "asst_1") == 4
    await old.close()
    await new.close()


class Stop(Exception):
    """Stands for Ctrl-C in the middle of a reindex."""


async def test_an_interrupted_reindex_resumes_without_doing_anything_twice(
    where: tuple[Path, str | None], embedder: OnnxMiniLM, tenant: str
) -> None:
    old = open_index(where[0], where[1], embedder)
    await old.upsert(
        [rec(tenant, f"m{i:02d}", f"Fact {i} about topic {i % 3}.") for i in range(10)]
    )
    counted = Counting(Renamed(embedder, "test-model-v3"))
    new = open_index(where[0], where[1], counted)
    seen: list[int] = []

    def stop_after_two(n: int) -> None:
        seen.append(n)
        if len(seen) == 3:  # the first report says what was done before: nothing
            raise Stop

    with pytest.raises(Stop):
        await reindex(new, tenant, "asst_1", advance=stop_after_two, batch=3)
    assert seen == [0, 3, 3]
    assert counted.texts == 6
    # Meanwhile a memory goes and another changes: neither may come back stale.
    await old.delete(tenant, "asst_1", ["m00"])
    await old.upsert([rec(tenant, "m01", "Fact one, corrected.")])

    seen.clear()
    assert await reindex(new, tenant, "asst_1", advance=seen.append, batch=3) == 9
    assert seen[0] == 4  # m02-m05 were copied already, unchanged
    assert sum(seen) == 9
    assert counted.texts == 6 + 5
    assert await new.count(tenant, "asst_1") == 9
    assert await new.get(tenant, "asst_1", "m00") is None
    got = await new.get(tenant, "asst_1", "m01")
    assert got is not None
    assert got.text == "Fact one, corrected."
    assert (await ids_of(new, tenant, "Fact one corrected", mode="lexical"))[0] == "m01"
    await old.close()
    await new.close()


class Counting:
    """An embedder that counts the texts it embedded."""

    def __init__(self, inner: Renamed) -> None:
        self._inner = inner
        self.texts = 0

    @property
    def model_name(self) -> str:
        return self._inner.model_name

    @property
    def dim(self) -> int:
        return self._inner.dim

    async def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts += len(texts)
        return await self._inner.embed(texts)


async def test_concurrent_writes_and_searches(index: ChromaMemoryIndex, tenant: str) -> None:
    records = [rec(tenant, f"m{i:03d}", f"Fact number {i} about topic {i % 7}.") for i in range(60)]
    writes = [index.upsert(records[i : i + 10]) for i in range(0, 60, 10)]
    searches = [index.search(tenant, "asst_1", "topic 3", user_id="", limit=5) for _ in range(6)]
    await asyncio.gather(*writes, *searches)
    assert await index.count(tenant, "asst_1") == 60
    hits = await ids_of(index, tenant, "Fact number 17", mode="lexical", limit=3)
    assert hits[0] == "m017"


class Gate:
    """Holds the reads that build a search cache (the ones that fetch the
    embeddings) until it is opened, and counts the collection lookups and
    those reads: a slow Chroma, as the index sees it."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.lookups = 0
        self.reads = 0
        self._lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)


class GatedCollection:
    def __init__(self, collection: Any, gate: Gate) -> None:
        self._collection = collection
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if "embeddings" in kwargs.get("include", ()):
            self._gate.count("reads")
            if not self._gate.opened.wait(timeout=30):
                raise RuntimeError("the gate was never opened: no worker thread was free")
        return self._collection.get(*args, **kwargs)


class GatedClient:
    def __init__(self, client: Any, gate: Gate) -> None:
        self._client = client
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_collection(self, name: str) -> GatedCollection:
        collection = GatedCollection(self._client.get_collection(name), self._gate)
        self._gate.count("lookups")
        return collection


def test_cold_searches_share_one_read_and_hold_no_worker_thread(
    where: tuple[Path, str | None], embedder: OnnxMiniLM, tenant: str
) -> None:
    """Searches of a collection whose cache this process has not built yet
    wait for one read of it on the event loop: while that read is held, the
    other searches still get worker threads for their own Chroma calls, and
    a worker is free to open the gate (with the two workers this loop has,
    searches that each waited in a thread would leave none)."""

    async def scenario() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        writer = open_index(where[0], where[1], embedder)
        await writer.upsert([rec(tenant, mid, text, user=user) for mid, text, user in PETS])
        await writer.close()
        gate = Gate()
        index = open_index(where[0], where[1], embedder, wrap_client=lambda c: GatedClient(c, gate))
        searches = [
            asyncio.ensure_future(ids_of(index, tenant, "refund window", mode="lexical"))
            for _ in range(6)
        ]
        try:
            assert await eventually(lambda: gate.lookups == 6 and gate.reads == 1)
            await asyncio.to_thread(gate.opened.set)
        finally:
            gate.opened.set()  # a failed check leaves no worker held at the gate
        assert await asyncio.gather(*searches) == [["m_policy"]] * 6
        assert gate.reads == 1
        await index.close()

    asyncio.run(scenario())


async def test_lost_server_is_unavailable(
    embedder: OnnxMiniLM, tmp_path: Path, tenant: str
) -> None:
    server = ChromaServer().start()
    index = open_index(tmp_path, server.url, embedder)
    await index.upsert([rec(tenant, "m1", "The user likes tea.")])
    server.stop()
    with pytest.raises(Unavailable, match="cannot be reached"):
        await index.search(tenant, "asst_1", "tea", user_id="", limit=3)
    await index.close()
    with pytest.raises(Unavailable, match="cannot be reached"):
        open_index(tmp_path, server.url, embedder)
