"""The tenant's default assistant in the store, against the real FerretDB:
claims that race to replace a deleted default agree on one winner."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from service.store.assistants import MongoAssistantStore
from service.store.mongo import MongoStore, connect
from tests.support.ferretdb import FerretDB


@pytest.fixture
async def store(ferretdb: FerretDB) -> AsyncIterator[MongoStore]:
    opened = connect(ferretdb.uri, f"loom_claims_{uuid.uuid4().hex[:8]}")
    yield opened
    await opened.client.drop_database(opened.db.name)
    await opened.close()


async def test_first_claims_race_to_one_default(store: MongoStore) -> None:
    assistants: MongoAssistantStore = store.assistants
    won = await asyncio.gather(*(assistants.claim_default("t", f"a{i}", None) for i in range(8)))
    assert len(set(won)) == 1
    assert won[0] in {f"a{i}" for i in range(8)}
    assert await assistants.default_id("t") == won[0]


async def test_claims_replacing_one_default_agree_on_one_successor(store: MongoStore) -> None:
    assistants = store.assistants
    assert await assistants.claim_default("t", "old", None) == "old"
    candidates = [f"new{i}" for i in range(8)]
    won = await asyncio.gather(*(assistants.claim_default("t", c, "old") for c in candidates))
    # Exactly one candidate wins, and every claim is told the same winner.
    assert len(set(won)) == 1
    assert won[0] in candidates
    assert await assistants.default_id("t") == won[0]


async def test_a_stale_claim_leaves_the_default_alone(store: MongoStore) -> None:
    assistants = store.assistants
    await assistants.claim_default("t", "a", None)
    assert await assistants.claim_default("t", "b", "a") == "b"
    assert await assistants.claim_default("t", "c", "b") == "c"
    # A claim that still thinks "a" is the default, two successions late.
    assert await assistants.claim_default("t", "late", "a") == "c"
    assert await assistants.claim_default("t", "later", "b") == "c"
    assert await assistants.default_id("t") == "c"


async def test_tenants_defaults_are_independent(store: MongoStore) -> None:
    assistants = store.assistants
    await assistants.claim_default("t1", "x", None)
    await assistants.claim_default("t2", "x", None)
    assert await assistants.claim_default("t1", "y", "x") == "y"
    assert await assistants.claim_default("t2", "z", "x") == "z"
    assert await assistants.default_id("t1") == "y"
    assert await assistants.default_id("t2") == "z"
