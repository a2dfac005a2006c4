"""The memory write counter on the real local database (FerretDB), and two
replicas' search caches kept exact by it: a write through one is found by
the next search on the other, writes at the same instant included."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from service.memory.embeddings import OnnxMiniLM
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.ports import MemoryRecord
from service.store import MongoStore, connect
from service.store.scoped import key
from tests.support.ferretdb import FerretDB

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@pytest.fixture
async def stores(ferretdb: FerretDB) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    """Two clients of one database, as two replicas hold them."""
    database = f"loom_versions_{uuid.uuid4().hex[:8]}"
    pair = (connect(ferretdb.uri, database), connect(ferretdb.uri, database))
    yield pair
    await pair[0].client.drop_database(database)
    for store in pair:
        await store.close()


async def test_concurrent_bumps_from_two_clients_are_all_counted(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    # FerretDB 1.24 loses most of 200 concurrent $inc (see service/store/versions.py).
    per_task, tasks = 25, 8

    async def bump(store: MongoStore) -> list[int]:
        return [await store.memory_versions.bump("t", "asst") for _ in range(per_task)]

    runs = await asyncio.gather(*(bump(stores[i % 2]) for i in range(tasks)))
    returned = sorted(v for run in runs for v in run)
    assert returned == list(range(1, per_task * tasks + 1))  # each write its own number
    for store in stores:
        assert await store.memory_versions.current("t", "asst") == per_task * tasks
        assert await store.memory_versions.current("t", "other") == 0


async def test_a_lost_hint_is_caught_up_from_the_claims(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    versions = stores[0].memory_versions
    for _ in range(3):
        await versions.bump("t", "asst")
    # A hint left behind (a replica died between its claim and the hint).
    await stores[0].db["memory_versions"].update_one({}, {"$set": {"version": 1}})
    assert await stores[1].memory_versions.current("t", "asst") == 3
    assert await stores[1].memory_versions.bump("t", "asst") == 4


def _memory(tenant: str, memory_id: str, text: str) -> MemoryRecord:
    now = datetime.now(UTC)
    return MemoryRecord(
        memory_id=memory_id,
        tenant=tenant,
        assistant_id="asst_1",
        user_id="alice",
        text=text,
        kind="fact",
        source_thread_id="",
        create_time=now,
        update_time=now,
    )


async def _found(index: ChromaMemoryIndex, tenant: str, query: str) -> set[str]:
    hits = await index.search(tenant, "asst_1", query, user_id="alice", limit=100)
    return {h.record.memory_id for h in hits}


async def test_two_replicas_see_each_others_writes_at_once(
    stores: tuple[MongoStore, MongoStore], embedder: OnnxMiniLM, tmp_path: Path
) -> None:
    """Two indexes, each with its own caches and its own database client,
    over one Chroma: writes through both at the same instant, each followed
    by searches on both, which must find every write acknowledged so far
    (each text distinct: search folds memories of the same text into one)."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    replicas = [
        open_index(tmp_path, None, embedder, versions=store.memory_versions) for store in stores
    ]
    try:
        await replicas[0].upsert([_memory(tenant, "m_seed", "The user likes green tea.")])
        for replica in replicas:  # both caches warm
            assert await _found(replica, tenant, "tea") == {"m_seed"}
        written: set[str] = {"m_seed"}
        for round_ in range(8):
            mine = [f"m_{round_}_{side}" for side in range(2)]
            await asyncio.gather(
                *(
                    replica.upsert([_memory(tenant, m, f"The user drank tea {m}.")])
                    for replica, m in zip(replicas, mine, strict=True)
                ),
                *(_found(replica, tenant, "tea") for replica in replicas),
            )
            written.update(mine)
            for replica in replicas:
                assert await _found(replica, tenant, "tea") == written
        gone = sorted(written)[:4]
        await asyncio.gather(
            replicas[0].delete(tenant, "asst_1", gone[:2]),
            replicas[1].delete(tenant, "asst_1", gone[2:]),
        )
        written.difference_update(gone)
        for replica in replicas:
            assert await _found(replica, tenant, "tea") == written
    finally:
        for replica in replicas:
            await replica.close()


async def test_a_counter_stored_before_claims_carries_on(
    stores: tuple[MongoStore, MongoStore],
) -> None:
    # What an earlier Loom left: the counter alone, no claims.
    await stores[0].db["memory_versions"].insert_one({"_id": key("t", "asst"), "version": 5})
    versions = stores[1].memory_versions
    assert await versions.current("t", "asst") == 5
    assert await versions.bump("t", "asst") == 6
    assert await versions.current("t", "asst") == 6
