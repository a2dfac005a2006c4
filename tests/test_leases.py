"""Leases against a real FerretDB: takeovers that cannot leave a thread busy
for good, epochs that grow along takeovers, and a holder told at once that
it lost its lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import thread_pb2
from service.core.errors import LeaseLost, LeaseUnconfirmed
from service.core.lease_port import LeaseOutcome
from service.core.leases import Leases
from service.core.shield import Shield
from service.store import MongoStore, connect
from tests.conftest import Api, expect_error, make_settings, new_tenant_key, start_loom
from tests.scripted_llm import ScriptedLLM
from tests.support.ferretdb import FerretDB

LEASE = 2.0


@pytest.fixture
async def store(ferretdb: FerretDB) -> AsyncIterator[MongoStore]:
    store = connect(ferretdb.uri, "loom_leases")
    yield store
    await store.close()


def _now() -> datetime:
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


async def test_a_taker_that_died_part_way_blocks_the_thread_one_lease_at_most(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    """The state a replica leaves when it dies between the takeover marker's
    insert and the lease's replace: a dead holder's expired lease and a
    marker. The thread is busy while the marker lives, then answers again."""
    loom = await start_loom(
        make_settings(ferretdb, llm, mongodb_db="loom_stuck", lease_seconds=LEASE)
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            first = await api.send(content="hello")
            thread_id = first[0].started.thread_id
            tenant = (await loom.keys.authenticate(api.key)).tenant
            now = _now()
            leases = loom.store.db["leases"]
            await leases.insert_one(
                {
                    "_id": thread_id,
                    "tenant": tenant,
                    "owner": "dead-holder",
                    "expires": now - timedelta(seconds=1),
                    "purpose": "reply",
                    "epoch": 7,
                }
            )
            await leases.insert_one(
                {
                    "_id": f"{thread_id}/takeover/dead-holder",
                    "tenant": tenant,
                    "expires": now + timedelta(seconds=LEASE),
                }
            )
            request = thread_pb2.SendMessageRequest(content="still there?", thread_id=thread_id)
            await expect_error(
                api.threads.SendMessage(request, metadata=api.metadata),
                grpc.StatusCode.ABORTED,
                "THREAD_BUSY",
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LEASE + 5.0
            answered = None
            while answered is None and loop.time() < deadline:
                try:
                    answered = await api.send(content="still there?", thread_id=thread_id)
                except aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.ABORTED:
                        raise
                    await asyncio.sleep(0.2)
            assert answered is not None, "the thread stayed busy past the marker's lifetime"
            assert answered[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
            assert await leases.count_documents({"_id": {"$regex": f"^{thread_id}"}}) == 0
    finally:
        await loom.stop(0)


async def test_a_marker_without_an_expiry_is_cleared_at_once(store: MongoStore) -> None:
    now = _now()
    await store.db["leases"].insert_many(
        [
            {"_id": "t-legacy", "tenant": "t", "owner": "dead", "expires": now, "epoch": 3},
            {"_id": "t-legacy/takeover/dead", "tenant": "t"},
        ]
    )
    later = now + timedelta(milliseconds=5)
    grant = await store.leases.acquire("t", "t-legacy", "me", later + timedelta(seconds=5), later)
    assert grant.outcome is LeaseOutcome.TAKEN_OVER
    assert grant.other is not None
    assert grant.other.owner == "dead"
    assert await store.db["leases"].count_documents({"_id": "t-legacy/takeover/dead"}) == 0


async def test_epochs_grow_along_takeovers(store: MongoStore) -> None:
    t = _now()
    fresh = await store.leases.acquire("t", "t-epoch", "a", t + timedelta(seconds=1), t)
    assert fresh.outcome is LeaseOutcome.ACQUIRED
    assert fresh.epoch == int(t.timestamp() * 1000)
    busy = await store.leases.acquire("t", "t-epoch", "b", t + timedelta(seconds=1), t)
    assert busy.outcome is LeaseOutcome.BUSY
    assert busy.other is not None
    assert busy.other.owner == "a"
    # A taker whose clock is behind still gets a larger epoch.
    await store.db["leases"].update_one({"_id": "t-epoch"}, {"$set": {"epoch": 10**14}})
    later = t + timedelta(seconds=2)
    taken = await store.leases.acquire("t", "t-epoch", "c", later + timedelta(seconds=1), later)
    assert taken.outcome is LeaseOutcome.TAKEN_OVER
    assert taken.epoch == 10**14 + 1
    state = await store.leases.current("t-epoch")
    assert state is not None
    assert (state.owner, state.epoch) == ("c", 10**14 + 1)


async def test_one_taker_wins_a_race_for_an_expired_lease(store: MongoStore) -> None:
    t = _now()
    await store.db["leases"].insert_one(
        {"_id": "t-race", "tenant": "t", "owner": "dead", "expires": t, "epoch": 1}
    )
    later = t + timedelta(milliseconds=10)
    grants = await asyncio.gather(
        *(
            store.leases.acquire("t", "t-race", f"taker{i}", later + timedelta(seconds=5), later)
            for i in range(8)
        )
    )
    outcomes = [g.outcome for g in grants]
    assert outcomes.count(LeaseOutcome.TAKEN_OVER) == 1
    assert outcomes.count(LeaseOutcome.BUSY) == 7
    winner = next(i for i, g in enumerate(grants) if g.outcome is LeaseOutcome.TAKEN_OVER)
    state = await store.leases.current("t-race")
    assert state is not None
    assert state.owner == f"taker{winner}"


async def test_a_holder_learns_it_lost_the_lease_when_another_takes_it(store: MongoStore) -> None:
    leases = Leases(store.leases, 0.6, Shield())
    async with leases.hold("t", "t-lost") as lease:
        lease.check()
        assert not lease.lost.is_set()
        # Another replica took it over (as after a stall longer than the lease).
        await store.db["leases"].update_one({"_id": "t-lost"}, {"$set": {"owner": "other"}})
        await asyncio.wait_for(lease.lost.wait(), timeout=5)
        with pytest.raises(LeaseLost):
            lease.check()
    state = await store.leases.current("t-lost")
    assert state is not None
    assert state.owner == "other", "a lost lease is not released by its former holder"


async def test_a_holder_that_cannot_reach_the_database_stops_before_its_lease_lapses() -> None:
    database = FerretDB().start()
    store = connect(database.uri, "loom_leases_down", timeout=0.3)
    try:
        lease = await Leases(store.leases, 1.5, Shield()).claim("t", "t-down")
        assert lease is not None
        database.kill()
        # Renewals fail; the holder is told before the lease could lapse
        # and be taken by another replica, and why (not that it was taken).
        await asyncio.wait_for(lease.lost.wait(), timeout=5)
        with pytest.raises(LeaseUnconfirmed):
            lease.check()
    finally:
        await store.close()
        database.stop()
