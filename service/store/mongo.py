"""Connection, collections and indexes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from service.store.assistants import MongoAssistantStore
from service.store.fencing import Fences
from service.store.jobs import MongoJobStore
from service.store.keys import MongoApiKeyStore
from service.store.leases import MongoLeaseStore
from service.store.memory_history import MongoMemoryHistory
from service.store.messages import MongoMessageStore
from service.store.migrate import scope_keys
from service.store.requests import MongoRequestStore
from service.store.threads import MongoThreadStore
from service.store.versions import MongoMemoryVersions

__all__ = ["MongoStore", "connect"]

Doc = dict[str, object]

# Every query the store issues, by the index that serves it. A read or write
# of one document filters on _id (each collection's primary key, which holds
# the tenant: store/scoped.py) and is not listed. On MongoDB each index
# serves its equality fields and then its sort. FerretDB over PostgreSQL
# pushes the equality filters down and serves them from the GIN twin
# scripts/postgres-gin-twins.sql gives each index, then sorts in memory: the
# sort part (after the equality fields) is used by MongoDB only. FerretDB
# over SQLite pushes down nothing but a lone _id: it uses these indexes only
# to enforce the unique ones.
# Lists are newest first by (create_time, _id): ids are random (core/ids.py).
_NEWEST = [("create_time", DESCENDING), ("_id", DESCENDING)]
_INDEXES: dict[str, list[IndexModel]] = {
    "assistants": [
        # ListAssistants: {tenant, deleting $ne} newest first.
        IndexModel([("tenant", ASCENDING), *_NEWEST], name="tenant_created"),
        # Deletions a crash interrupted, finished at start: {deleting: true}.
        IndexModel([("deleting", ASCENDING)], name="deleting"),
    ],
    "threads": [
        # ListThreads: {tenant, deleting $ne} and any of assistant_id and
        # user_id, newest first (with both, the user's index: a user has few
        # threads); and a deleted assistant's threads {tenant, assistant_id}.
        IndexModel([("tenant", ASCENDING), *_NEWEST], name="tenant_created"),
        IndexModel(
            [("tenant", ASCENDING), ("assistant_id", ASCENDING), *_NEWEST],
            name="tenant_assistant_created",
        ),
        IndexModel(
            [("tenant", ASCENDING), ("user_id", ASCENDING), *_NEWEST],
            name="tenant_user_created",
        ),
        # ListThreads' update_time ranges. Metadata filters have no index: any
        # key may be asked for, and wildcard indexes are MongoDB-only; they
        # narrow what the other clauses and the tenant select.
        IndexModel([("tenant", ASCENDING), ("update_time", DESCENDING)], name="tenant_update_time"),
        # Deletions a crash interrupted, finished at start: {deleting: true}.
        IndexModel([("deleting", ASCENDING)], name="deleting"),
        # Replies whose holder died mid-reply, settled by the sweep
        # (core/reply/recovery.py): {replying: true}.
        IndexModel([("replying", ASCENDING)], name="replying"),
    ],
    "thread_usage": [
        # Usage totals of a page of threads: {tenant, _id $in}.
        IndexModel([("tenant", ASCENDING)], name="tenant"),
    ],
    "messages": [
        # ListMessages, a prompt's history and a thread's deletion:
        # {thread_id, tenant} by sequence; a run's last reply: {thread_id,
        # tenant, run_id, role} by sequence, newest first (the rest of the
        # filter is applied as the index is walked back from the thread's
        # end, where a replayed run is). Unique, it also makes sequence
        # numbers gap- and duplicate-free across writers and replicas.
        IndexModel([("thread_id", ASCENDING), ("sequence", ASCENDING)], unique=True, name="seq"),
    ],
    "api_keys": [
        # Authentication: {digest}.
        IndexModel([("digest", ASCENDING)], unique=True, name="digest"),
        # `api-keys list --tenant`: {tenant} by creation time.
        IndexModel([("tenant", ASCENDING), ("create_time", ASCENDING)], name="tenant_created"),
    ],
    "jobs": [
        # The job poller: {state: pending, next_run_time $lte} and {state:
        # running, update_time $lt} by next_run_time; the backlog metric:
        # {state} for each open state.
        IndexModel([("state", ASCENDING), ("next_run_time", ASCENDING)], name="due"),
    ],
    "memory_history": [
        # Forgetting a thread's memories: {tenant, assistant_id,
        # source_thread_id}; an assistant's: {tenant, assistant_id}. A
        # memory's own history is read and deleted by _id.
        IndexModel(
            [("tenant", ASCENDING), ("assistant_id", ASCENDING), ("source_thread_id", ASCENDING)],
            name="tenant_assistant_thread",
        )
    ],
}


@dataclass(frozen=True, slots=True)
class MongoStore:
    """Every repository over one database."""

    client: AsyncMongoClient[Doc]
    # One connection of its own for ``ping``: a health check must not wait
    # behind the replica's own load for one of ``client``'s connections, or
    # a busy database reads as an unreachable one.
    probe: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    assistants: MongoAssistantStore
    threads: MongoThreadStore
    leases: MongoLeaseStore
    messages: MongoMessageStore
    requests: MongoRequestStore
    keys: MongoApiKeyStore
    jobs: MongoJobStore
    memory_versions: MongoMemoryVersions
    memory_history: MongoMemoryHistory
    fences: Fences

    async def migrate(self) -> int:
        """Bring documents stored by earlier versions to today's shape (keys
        scoped by tenant: ``migrate.scope_keys``); return how many moved."""
        return await scope_keys(self.db)

    async def ensure_indexes(self) -> None:
        """Create the indexes (idempotent), and learn how the server takes a
        fenced write (``Fences.detect``)."""
        await self.fences.detect(self.db)
        for name, indexes in _INDEXES.items():
            collection: AsyncCollection[Doc] = self.db[name]
            # One index per command: FerretDB 1.24 drops the connection when a
            # multi-index createIndexes repeats indexes that already exist.
            for index in indexes:
                await collection.create_indexes([index])

    async def note_memory_store(self, where: str) -> str | None:
        """Record ``where`` as the memory store of the replicas on this
        database; return the one recorded before (None if none was)."""
        before = await self.db["deployment"].find_one_and_update(
            {"_id": "memory_store"}, {"$set": {"where": where}}, upsert=True
        )
        return None if before is None else str(before.get("where", ""))

    async def ping(self) -> None:
        """Round-trip to the server, on a connection that waits for none of
        the store's work.

        Raises:
            pymongo.errors.PyMongoError: the server is unreachable.
        """
        await self.probe[self.db.name].command("ping")

    async def close(self) -> None:
        """Close the clients' connections."""
        await self.client.close()
        await self.probe.close()


def connect(
    uri: str,
    database: str,
    *,
    timeout: float = 2.0,
    max_pool: int = 100,
    listeners: Sequence[monitoring.CommandListener] = (),
) -> MongoStore:
    """Return a store over ``database`` (connections open lazily);
    ``listeners`` see every command it sends.

    ``timeout`` (seconds, ``LOOM_MONGODB_TIMEOUT``) bounds finding a server
    and opening a connection, so a call made while the database is down
    fails that fast (UNAVAILABLE) rather than running into its caller's
    deadline. An operation already sent may wait ten times as long for its
    answer: a loaded database (FerretDB waiting on SQLite's lock, say) can
    be slow to answer without being gone, and a dead one drops the
    connection, which is noticed at once.

    ``max_pool`` (``LOOM_MONGODB_MAX_POOL``) caps the connections the
    store opens for its work; calls beyond it wait for one to be free. One
    more serves ``ping``. On FerretDB 1.24
    it is what keeps the database alive: FerretDB runs a matched update as a
    read that holds one of its own connections to PostgreSQL (or SQLite)
    while it takes a second for the write, so as many concurrent updates as
    its pool has connections (50 over PostgreSQL unless ``pool_max_conns``
    says otherwise, 100 over SQLite) each hold one and wait for ever for
    another, and FerretDB answers nothing again until it is restarted. The
    caps of every client of one FerretDB (plus one each for ``ping``),
    summed, must stay below its pool; MongoDB has no such limit."""
    ms = max(int(timeout * 1000), 1)
    options: dict[str, Any] = {
        "tz_aware": True,
        "serverSelectionTimeoutMS": ms,
        "connectTimeoutMS": ms,
        "socketTimeoutMS": 10 * ms,
        "appname": "loom",
        "event_listeners": list(listeners),
    }
    client: AsyncMongoClient[Doc] = AsyncMongoClient(uri, maxPoolSize=max_pool, **options)
    probe: AsyncMongoClient[Doc] = AsyncMongoClient(uri, maxPoolSize=1, **options)
    db = client[database]
    fences = Fences()
    return MongoStore(
        client=client,
        probe=probe,
        db=db,
        assistants=MongoAssistantStore(db["assistants"], db["default_assistants"]),
        threads=MongoThreadStore(db["threads"], db["thread_usage"], fences),
        leases=MongoLeaseStore(db["leases"]),
        messages=MongoMessageStore(db["messages"], fences),
        requests=MongoRequestStore(db["requests"]),
        keys=MongoApiKeyStore(db["api_keys"], db["tenants"]),
        jobs=MongoJobStore(db["jobs"]),
        memory_versions=MongoMemoryVersions(db["memory_versions"], db["memory_version_claims"]),
        memory_history=MongoMemoryHistory(db["memory_history"]),
        fences=fences,
    )
