"""Connection, collections and indexes."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from service.store.assistants import MongoAssistantStore
from service.store.fencing import Fences
from service.store.jobs import MongoJobStore
from service.store.keys import MongoApiKeyStore
from service.store.leases import MongoLeaseStore
from service.store.messages import MongoMessageStore
from service.store.requests import MongoRequestStore
from service.store.threads import MongoThreadStore
from service.store.versions import MongoMemoryVersions

__all__ = ["MongoStore", "connect"]

Doc = dict[str, object]

_INDEXES: dict[str, list[IndexModel]] = {
    "assistants": [IndexModel([("tenant", ASCENDING), ("_id", DESCENDING)], name="tenant_id")],
    "threads": [
        IndexModel([("tenant", ASCENDING), ("_id", DESCENDING)], name="tenant_id"),
        IndexModel(
            [("tenant", ASCENDING), ("assistant_id", ASCENDING), ("_id", DESCENDING)],
            name="tenant_assistant_id",
        ),
        IndexModel(
            [("tenant", ASCENDING), ("user_id", ASCENDING), ("_id", DESCENDING)],
            name="tenant_user_id",
        ),
    ],
    "messages": [
        # The unique index is what makes sequence numbers gap- and duplicate-free
        # across concurrent writers and replicas.
        IndexModel([("thread_id", ASCENDING), ("sequence", ASCENDING)], unique=True, name="seq"),
    ],
    "api_keys": [IndexModel([("digest", ASCENDING)], unique=True, name="digest")],
    "jobs": [IndexModel([("state", ASCENDING), ("next_run_time", ASCENDING)], name="due")],
}


@dataclass(frozen=True, slots=True)
class MongoStore:
    """Every repository over one database."""

    client: AsyncMongoClient[Doc]
    db: AsyncDatabase[Doc]
    assistants: MongoAssistantStore
    threads: MongoThreadStore
    leases: MongoLeaseStore
    messages: MongoMessageStore
    requests: MongoRequestStore
    keys: MongoApiKeyStore
    jobs: MongoJobStore
    memory_versions: MongoMemoryVersions
    fences: Fences

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

    async def ping(self) -> None:
        """Round-trip to the server.

        Raises:
            pymongo.errors.PyMongoError: the server is unreachable.
        """
        await self.db.command("ping")

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()


def connect(uri: str, database: str, *, timeout: float = 2.0) -> MongoStore:
    """Return a store over ``database`` (connections open lazily).

    ``timeout`` (seconds, ``LOOM_MONGODB_TIMEOUT``) bounds finding a server
    and opening a connection, so a call made while the database is down
    fails that fast (UNAVAILABLE) rather than running into its caller's
    deadline. An operation already sent may wait ten times as long for its
    answer: a loaded database (FerretDB waiting on SQLite's lock, say) can
    be slow to answer without being gone, and a dead one drops the
    connection, which is noticed at once."""
    ms = max(int(timeout * 1000), 1)
    client: AsyncMongoClient[Doc] = AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=ms,
        connectTimeoutMS=ms,
        socketTimeoutMS=10 * ms,
        appname="loom",
    )
    db = client[database]
    fences = Fences()
    return MongoStore(
        client=client,
        db=db,
        assistants=MongoAssistantStore(db["assistants"], db["default_assistants"]),
        threads=MongoThreadStore(db["threads"], fences),
        leases=MongoLeaseStore(db["leases"]),
        messages=MongoMessageStore(db["messages"], fences),
        requests=MongoRequestStore(db["requests"]),
        keys=MongoApiKeyStore(db["api_keys"], db["tenants"]),
        jobs=MongoJobStore(db["jobs"]),
        memory_versions=MongoMemoryVersions(db["memory_versions"]),
        fences=fences,
    )
