"""Every query the store sends is served by an index on the local database
(FerretDB over PostgreSQL): the commands are recorded as the store sends
them, and each one's filter is EXPLAINed with sequential scans switched off,
so a plan that still scans has no index to use."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import monitoring

from service.core import ids
from service.core.filtering import Comparison
from service.core.memory_history import MemoryVersion
from service.core.models import Assistant, Message, MessageStatus, Role, Thread, Usage
from service.core.ports import ApiKey, Job, JobState
from service.store import MongoStore, connect
from tests.support.ferretdb import FerretDB

TENANT = "t-indexes"


class Recorder(monitoring.CommandListener):
    """Keeps (collection, filter) of every command that has one."""

    def __init__(self) -> None:
        self.filters: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        name = event.command_name
        if name in ("find", "findAndModify"):
            self.filters.append((command[name], command.get("filter", command.get("query", {}))))
        elif name in ("update", "delete"):
            for statement in command.get(f"{name}s", ()):
                self.filters.append((command[name], statement["q"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="module")
def database() -> Iterator[FerretDB]:
    server = FerretDB(postgres_settings={"enable_seqscan": "off"})
    if server.backend != "postgresql":
        pytest.skip(f"FerretDB over {server.backend} pushes down no filter but a lone _id")
    yield server.start()
    server.stop()


async def _seed(store: MongoStore) -> tuple[Thread, str]:
    t = datetime.now(UTC)
    assistant = Assistant(ids.new_id(ids.ASSISTANT), TENANT, create_time=t, update_time=t)
    await store.assistants.insert(assistant)
    thread = Thread(ids.new_id(ids.THREAD), TENANT, assistant.assistant_id, user_id="u1")
    await store.threads.insert(thread)
    messages = [
        Message(ids.new_id(ids.MESSAGE), TENANT, thread.thread_id, Role.USER, f"m{i}", done)
        for i, done in enumerate([MessageStatus.COMPLETE] * 4)
    ]
    await store.messages.append_all(messages, 0)
    await store.keys.insert(ApiKey("k1", TENANT, "lm_", t), "digest-1")
    job = Job(ids.new_id(ids.JOB), "kind", TENANT, {}, JobState.PENDING, t, t, t)
    await store.jobs.insert(job)
    version = MemoryVersion("m1", 1, "an earlier text", {}, "updated", t)
    await store.memory_history.add(TENANT, assistant.assistant_id, thread.thread_id, [version])
    return thread, assistant.assistant_id


async def _every_query(store: MongoStore, thread: Thread, assistant_id: str) -> None:
    """Each read, list and write of the store, once."""
    t = datetime.now(UTC)
    await store.assistants.get(TENANT, assistant_id)
    await store.assistants.find_page(TENANT, 10, None)
    await store.assistants.find_page(TENANT, 10, (t, assistant_id))
    await store.assistants.pending_deletes()
    await store.threads.get(TENANT, thread.thread_id)
    for assistant, user in [("", ""), (assistant_id, ""), ("", "u1"), (assistant_id, "u1")]:
        await store.threads.find_page(TENANT, assistant, user, 10, None)
        await store.threads.find_page(TENANT, assistant, user, 10, (t, thread.thread_id))
    for comparison in [
        Comparison("user_id", "", "=", "u1"),
        Comparison("assistant_id", "", "=", assistant_id),
        Comparison("update_time", "", ">=", t - timedelta(days=1)),
        Comparison("metadata", "ticket", "=", "123"),
    ]:
        await store.threads.find_page(TENANT, "", "", 10, (t, thread.thread_id), [comparison])
    await store.threads.update(TENANT, thread.thread_id, {"metadata": {"ticket": "123"}}, t)
    await store.threads.mark_batch(TENANT, thread.thread_id, None)
    await store.threads.add_usage(TENANT, thread.thread_id, Usage(3, 4))
    await store.threads.job_usage(TENANT, [thread.thread_id])
    await store.threads.claim_expired(TENANT, thread.thread_id, t)
    await store.threads.ids_of_assistant(TENANT, assistant_id)
    await store.threads.pending_deletes()
    await store.threads.save_context(TENANT, thread.thread_id, [], 4, t, epoch=0)
    await store.threads.claim(TENANT, thread.thread_id, 1)
    await store.threads.end_claim(TENANT, thread.thread_id, epoch=1)
    await store.threads.unfinished(100)
    await store.messages.find_page(TENANT, thread.thread_id, 10, None, False)
    await store.messages.find_page(TENANT, thread.thread_id, 10, 3, True)
    await store.messages.find_page(TENANT, thread.thread_id, 2, None, False, before=2)
    await store.messages.history(TENANT, thread.thread_id, 3)
    await store.messages.delete_from(TENANT, ids.new_id(ids.THREAD), 0)
    await store.messages.delete_thread(TENANT, ids.new_id(ids.THREAD))
    await store.keys.find("digest-1")
    await store.keys.list_keys(TENANT)
    await store.jobs.due(t, t - timedelta(minutes=1), 32)
    await store.jobs.backlog()
    await store.leases.acquire(TENANT, thread.thread_id, "me", t + timedelta(seconds=30), t)
    await store.leases.renew(thread.thread_id, "me", t + timedelta(seconds=60))
    await store.leases.release(thread.thread_id, "me")
    await store.memory_history.versions(TENANT, assistant_id, "m1")
    await store.memory_history.versions_of(TENANT, assistant_id, ["m1", "m2"])
    await store.memory_history.delete(TENANT, assistant_id, ["m1"])
    await store.memory_history.delete_thread(TENANT, assistant_id, thread.thread_id)
    await store.memory_history.delete_assistant(TENANT, assistant_id)


def _scans(plan: dict[str, Any]) -> bool:
    return plan["Node Type"] == "Seq Scan" or any(_scans(p) for p in plan.get("Plans", ()))


async def test_every_store_query_reads_an_index(database: FerretDB) -> None:
    recorder = Recorder()
    store = connect(database.uri, "loom_indexes", listeners=[recorder])
    try:
        await store.ensure_indexes()
        thread, assistant_id = await _seed(store)
        recorder.filters.clear()
        await _every_query(store, thread, assistant_id)
        assert len(recorder.filters) > 20
        scanning = []
        for collection, query in recorder.filters:
            explained = await store.db.command("explain", {"find": collection, "filter": query})
            if _scans(explained["queryPlanner"]["Plan"]):
                scanning.append((collection, query))
        assert scanning == []
    finally:
        await store.close()
