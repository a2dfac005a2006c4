"""A read by id names its tenant, so another tenant's object is never read,
not even to be refused: what comes back over the wire for it is what comes
back for an id that does not exist (no timed assertion: the bytes are
counted). And documents stored under bare ids by earlier versions are
re-keyed at start, without loss."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bson
import grpc
import pytest
from pymongo import AsyncMongoClient, monitoring

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core import ids
from service.core.models import Assistant, ContextEntry, Message, MessageStatus, Role, Thread
from service.core.ports import Job, JobState
from service.memory.collection import collection_name
from service.server import Loom
from service.store import connect
from service.store.assistants import MongoAssistantStore
from service.store.jobs import MongoJobStore
from service.store.messages import MongoMessageStore
from service.store.threads import MongoThreadStore
from tests.conftest import Api, expect_error, new_tenant_key
from tests.support.ferretdb import FerretDB

BIG = 450_000  # characters, as in the probe


@dataclass
class Replies(monitoring.CommandListener):
    """The size of each reply the server sent, in BSON bytes."""

    sizes: list[int] = field(default_factory=list)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.sizes.append(len(bson.encode(event.reply)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    async def bytes_of(self, read: Any) -> tuple[Any, int]:
        """What ``read`` returns, and the bytes the server sent for it."""
        self.sizes.clear()
        found = await read
        return found, sum(self.sizes)


@dataclass
class Stores:
    """The store's repositories over a client that counts reply bytes."""

    replies: Replies
    assistants: MongoAssistantStore
    threads: MongoThreadStore
    messages: MongoMessageStore
    jobs: MongoJobStore


@pytest.fixture
async def stores(loom: Loom) -> AsyncIterator[Stores]:
    replies = Replies()
    uri = loom.settings.mongodb_uri.get_secret_value()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, event_listeners=[replies])
    db = client[loom.settings.mongodb_db]
    yield Stores(
        replies,
        MongoAssistantStore(db["assistants"], db["default_assistants"]),
        MongoThreadStore(db["threads"], db["thread_usage"]),
        MongoMessageStore(db["messages"]),
        MongoJobStore(db["jobs"]),
    )
    await client.close()


async def _big_objects(loom: Loom, tenant: str) -> dict[str, str]:
    """An assistant, a thread, a message and a job of ``tenant``, each
    holding hundreds of thousands of characters; their ids."""
    now = datetime.now(UTC)
    assistant = Assistant(
        ids.new_id(ids.ASSISTANT), tenant, instructions="i" * 250_000, create_time=now
    )
    await loom.store.assistants.insert(assistant)
    thread = Thread(ids.new_id(ids.THREAD), tenant, assistant.assistant_id, create_time=now)
    await loom.store.threads.insert(thread)
    context = [
        ContextEntry(i, Role.USER, "c" * 2_000, MessageStatus.COMPLETE, 500) for i in range(225)
    ]
    await loom.store.threads.save_context(tenant, thread.thread_id, context, 225, now, epoch=0)
    message = Message(
        ids.new_id(ids.MESSAGE),
        tenant,
        thread.thread_id,
        Role.USER,
        "m" * 100_000,
        MessageStatus.COMPLETE,
        create_time=now,
    )
    await loom.store.messages.append(message, 0)
    job = Job(
        ids.new_id(ids.OPERATION),
        "memory.extract",
        tenant,
        {"filler": "j" * 200_000},
        JobState.SUCCEEDED,
        now,
        now,
        now,
    )
    await loom.store.jobs.insert(job)
    return {
        "assistant": assistant.assistant_id,
        "thread": thread.thread_id,
        "message": message.message_id,
        "job": job.job_id,
    }


async def test_another_tenants_object_costs_what_a_missing_one_does(
    loom: Loom, stores: Stores
) -> None:
    owner, stranger = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
    made = await _big_objects(loom, owner)
    reads: dict[str, Any] = {
        "assistant": stores.assistants.get,
        "thread": stores.threads.get,
        "message": stores.messages.get,
        "job": stores.jobs.get,
    }
    prefixes = {"assistant": ids.ASSISTANT, "thread": ids.THREAD, "message": ids.MESSAGE}
    for kind, read in reads.items():
        mine, mine_bytes = await stores.replies.bytes_of(read(owner, made[kind]))
        assert mine is not None
        assert mine_bytes > 100_000, kind  # the counting sees a document when one comes
        theirs, theirs_bytes = await stores.replies.bytes_of(read(stranger, made[kind]))
        missing_id = ids.new_id(prefixes.get(kind, ids.OPERATION))
        missing, missing_bytes = await stores.replies.bytes_of(read(stranger, missing_id))
        assert theirs is None
        assert missing is None
        # Same reply as for a missing id, give or take the ids' own bytes.
        assert abs(theirs_bytes - missing_bytes) < 64, (kind, theirs_bytes, missing_bytes)
        assert theirs_bytes < 1_000, (kind, theirs_bytes)


async def test_memories_of_another_tenant_live_in_another_collection() -> None:
    """Chroma reads go to the (tenant, assistant) collection by name, so
    another tenant's memory is never in the collection a read opens."""
    assistant_id = ids.new_id(ids.ASSISTANT)
    assert collection_name("acme", assistant_id) != collection_name("globex", assistant_id)


# ------------------------------------------------- documents of earlier versions


def _legacy(tenant: str) -> dict[str, list[dict[str, Any]]]:
    """Documents as versions before scoped keys stored them (bare ids)."""
    now = datetime.now(UTC).replace(microsecond=0)
    assistant, thread = "asst_" + "a" * 24, "thread_" + "b" * 24
    message = {"tenant": tenant, "thread_id": thread, "create_time": now, "metadata": {}}
    return {
        "assistants": [
            {
                "_id": assistant,
                "tenant": tenant,
                "name": "Old",
                "memory_mode": "off",
                "create_time": now,
                "update_time": now,
            }
        ],
        "threads": [
            {
                "_id": thread,
                "tenant": tenant,
                "assistant_id": assistant,
                "user_id": "",
                "metadata": {},
                "message_count": 2,
                "create_time": now,
                "update_time": now,
                "context": "",
            }
        ],
        "messages": [
            {**message, "_id": f"msg_{c * 24}", "role": r, "content": t, "status": "complete"}
            | {"sequence": i}
            for i, (c, r, t) in enumerate([("c", "user", "hello"), ("d", "assistant", "hi!")])
        ],
    }


async def test_documents_of_earlier_versions_are_re_keyed_at_start(
    loom: Loom, ferretdb: FerretDB
) -> None:
    store = connect(ferretdb.uri, f"loom_migrate_{uuid.uuid4().hex[:8]}")
    try:
        await store.ensure_indexes()
        tenant = "legacy"
        docs = _legacy(tenant)
        for name, batch in docs.items():
            await store.db[name].insert_many(batch)
        # A run that crashed after deleting a document it had parked.
        parked = docs["messages"][1]
        await store.db["messages"].delete_one({"_id": parked["_id"]})
        await store.db["migrating"].insert_one(
            {
                "_id": f"messages\x1f{parked['_id']}",
                "collection": "messages",
                "old": parked["_id"],
                "doc": parked | {"_id": f"{tenant}\x1f{parked['_id']}"},
            }
        )
        assert await store.migrate() == 4
        assert await store.migrate() == 0  # once
        assistant = await store.assistants.get(tenant, "asst_" + "a" * 24)
        assert assistant is not None
        assert assistant.name == "Old"
        thread = await store.threads.get(tenant, "thread_" + "b" * 24)
        assert thread is not None
        assert thread.assistant_id == assistant.assistant_id
        listed = await store.threads.find_page(tenant, "", "", 10, None)
        assert [t.thread_id for t in listed] == [thread.thread_id]
        history = await store.messages.history(tenant, thread.thread_id, 10)
        assert [(m.message_id, m.content) for m in history] == [
            ("msg_" + "c" * 24, "hello"),
            ("msg_" + "d" * 24, "hi!"),
        ]
        assert await store.messages.get(tenant, "msg_" + "d" * 24) is not None
        assert await store.threads.get("someone-else", thread.thread_id) is None
        assert await store.db["migrating"].count_documents({}) == 0
    finally:
        await store.db.client.drop_database(store.db.name)
        await store.close()


async def test_get_thread_of_another_tenant_is_not_found(api: Api, loom: Loom) -> None:
    events = await api.send(content="mine")
    thread_id = events[0].started.thread_id
    other = Api(api.channel, await new_tenant_key(loom))
    for call in (
        other.call(other.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)),
        other.call(other.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "THREAD_NOT_FOUND")
    assistant_id = events[0].started.assistant_id
    await expect_error(
        other.call(
            other.assistants.GetAssistant,
            assistant_pb2.GetAssistantRequest(assistant_id=assistant_id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
