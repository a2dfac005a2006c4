"""The database under load and faults, against real FerretDB and PostgreSQL:
what its storage refuses for a while answers UNAVAILABLE (never INTERNAL),
and Loom's connection cap keeps FerretDB from locking itself up."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from pymongo.errors import OperationFailure

from generated.loom.v1 import thread_pb2
from service.core.errors import Unavailable
from service.store import connect
from service.store import errors as store_errors
from tests.conftest import (
    Api,
    eventually,
    expect_error,
    make_settings,
    new_tenant_key,
    start_loom,
)
from tests.scripted_llm import ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.postgres import Postgres

# What FerretDB 1.24 answered here (code 1, InternalError), abridged.
_REFUSED_FOR_A_WHILE = [
    "[collection.go:109 postgresql.(*collection).Query] ERROR: canceling statement due to "
    "lock timeout (SQLSTATE 55P03)",
    "[backend.go:109 postgresql.(*backend).Status] failed to connect to `user=loom "
    "database=ferretdb_1_0`: dial error: dial unix /tmp/x/.s.PGSQL.5432: connect: "
    "no such file or directory",
    "ERROR: deadlock detected (SQLSTATE 40P01)",
    "FATAL: sorry, too many clients already (SQLSTATE 53300)",
    "FATAL: terminating connection due to administrator command (SQLSTATE 57P01)",
    "database is locked (5) (SQLITE_BUSY)",
]
_NOT_TRANSIENT = [
    "ERROR: invalid input syntax for type json (SQLSTATE 22P02)",
    "ERROR: duplicate key value violates unique constraint (SQLSTATE 23505)",
]


@pytest.mark.parametrize("text", _REFUSED_FOR_A_WHILE)
def test_storage_refusals_that_pass_are_unavailable(text: str) -> None:
    assert isinstance(store_errors.translate(OperationFailure(text, code=1)), Unavailable)


@pytest.mark.parametrize("text", _NOT_TRANSIENT)
def test_storage_errors_that_stay_are_not_translated(text: str) -> None:
    assert store_errors.translate(OperationFailure(text, code=1)) is None


def _tables(database: FerretDB) -> list[str]:
    assert database.postgres is not None
    listed = database.postgres.psql(
        database.database,
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE tablename NOT LIKE '\\_ferretdb%' AND schemaname NOT IN "
        "('pg_catalog', 'information_schema', 'public')",
    )
    return listed.split()


@contextlib.asynccontextmanager
async def _locked(database: FerretDB, table: str) -> AsyncIterator[None]:
    """``table`` locked by a psql session of its own (ACCESS EXCLUSIVE: no
    read or write of it proceeds) from entry, once granted, to exit."""
    postgres = database.postgres
    assert postgres is not None

    def hold() -> None:
        # Returns when its session is terminated at exit.
        with contextlib.suppress(RuntimeError):
            postgres.psql(
                database.database,
                f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; "
                "SELECT pg_sleep(120); COMMIT;",
            )

    holder = threading.Thread(target=hold)
    holder.start()
    granted = (
        "SELECT count(*) FROM pg_locks WHERE relation = "  # noqa: S608 - a table's name
        f"'{table}'::regclass AND mode = 'AccessExclusiveLock' AND granted"
    )
    try:
        assert await eventually(lambda: postgres.psql(database.database, granted) == "1", 60)
        yield
    finally:
        postgres.psql(
            database.database,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()",
        )
        await asyncio.to_thread(holder.join)


async def test_a_table_locked_past_lock_timeout_answers_unavailable(llm: ScriptedLLM) -> None:
    """PostgreSQL refusing to wait for a lock (55P03, as under contention
    with lock_timeout set) reaches the caller as UNAVAILABLE, and the same
    call succeeds once the lock is gone."""
    database = FerretDB(postgres_settings={"lock_timeout": "'200ms'"}, backend="postgresql")
    database.start()
    loom = await start_loom(make_settings(database, llm, mongodb_db="loom_locked"))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            await api.send(content="hello")
            threads = next(t for t in _tables(database) if t.startswith("loom_locked.threads"))
            async with _locked(database, threads):
                await expect_error(
                    api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(), timeout=10),
                    grpc.StatusCode.UNAVAILABLE,
                    "DATABASE_UNAVAILABLE",
                )
            listed = await api.call(
                api.threads.ListThreads, thread_pb2.ListThreadsRequest(), timeout=10
            )
            assert len(listed.threads) == 1
    finally:
        await loom.stop(0)
        database.stop()


async def test_postgresql_down_under_ferretdb_answers_unavailable_and_back(
    llm: ScriptedLLM,
) -> None:
    """FerretDB up, PostgreSQL under it stopped: calls answer UNAVAILABLE
    at once (FerretDB says it cannot connect), and Loom serves again when
    PostgreSQL is back, without a restart."""
    cluster = Postgres().start()
    database = FerretDB(postgres=cluster, backend="postgresql").start()
    loom = await start_loom(make_settings(database, llm, mongodb_db="loom_pg_down"))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            await api.send(content="before")
            await asyncio.to_thread(cluster.stop, remove=False)
            await expect_error(
                api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(), timeout=10),
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            )
            await expect_error(
                api.threads.SendMessage(
                    thread_pb2.SendMessageRequest(content="during"),
                    metadata=api.metadata,
                    timeout=10,
                ),
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            )
            await asyncio.to_thread(cluster.start)
            events = await api.send(content="after")
            assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    finally:
        await loom.stop(0)
        database.stop()
        cluster.stop()


async def test_updates_beyond_ferretdbs_pool_wait_in_loom_not_in_ferretdb() -> None:
    """FerretDB 1.24 holds one of its storage connections while it takes a
    second for a matched update: as many concurrent updates as it has
    connections lock it up for good. With Loom's cap below FerretDB's pool,
    three times as many concurrent updates as FerretDB has connections all
    finish, and FerretDB still answers afterwards."""
    database = FerretDB(pool=4, backend="postgresql").start()
    store = connect(database.uri, f"loom_pool_{uuid.uuid4().hex[:8]}", max_pool=3)
    counters = store.db["counters"]
    try:
        await counters.insert_many([{"_id": i, "n": 0} for i in range(12)])

        async def bump(i: int) -> None:
            for _ in range(20):
                await counters.find_one_and_update({"_id": i}, {"$inc": {"n": 1}})

        # A bound for a lock-up, not a speed target: the work takes a second or two.
        await asyncio.wait_for(asyncio.gather(*(bump(i) for i in range(12))), timeout=120)
        assert [d["n"] async for d in counters.find({})] == [20] * 12
        await store.ping()
    finally:
        await store.close()
        database.stop()


async def test_ping_answers_while_every_connection_of_the_store_waits() -> None:
    """The health check's ping has a connection of its own: with the
    store's only connection waiting on a locked table (a database busy, not
    down), ping still answers."""
    database = FerretDB(backend="postgresql").start()
    name = f"loom_probe_{uuid.uuid4().hex[:8]}"
    store = connect(database.uri, name, max_pool=1)
    try:
        await store.db["slow"].insert_one({"_id": 1})
        table = next(t for t in _tables(database) if t.startswith(f"{name}.slow"))
        async with _locked(database, table):
            waiting = asyncio.create_task(store.db["slow"].find_one({"_id": 1}))
            # The find is in flight once PostgreSQL has it waiting for the lock.
            assert database.postgres is not None
            postgres = database.postgres
            blocked = (
                "SELECT count(*) FROM pg_locks WHERE relation = "  # noqa: S608 - a table's name
                f"'{table}'::regclass AND NOT granted"
            )
            assert await eventually(lambda: postgres.psql(database.database, blocked) != "0", 60)
            # A bound for a hang, not a speed target.
            await asyncio.wait_for(store.ping(), timeout=30)
        assert await waiting == {"_id": 1}
    finally:
        await store.close()
        database.stop()
