"""SendMessage's ``on_busy`` against the real service: a second message on
a busy thread refused (REJECT), queued behind the running reply (ENQUEUE)
or interrupting it (INTERRUPT); the queue's cap, a deadline while queued,
a dead waiter that blocks nobody for good, and both waiting modes across
two replicas sharing one database."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc import aio

from generated.loom.v1 import thread_pb2, tools_pb2
from service.server import Loom
from tests.conftest import Api, expect_error, make_settings, new_tenant_key, retry_delay, start_loom
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB

# Ten seconds of streaming: a second message reaches the thread before it
# ends even on a loaded machine (the interrupted ones end far sooner).
SLOW = Reply(text=" ".join(f"w{i}" for i in range(40)), chunk_delay=0.25)


def _send(api: Api, thread_id: str, content: str, on_busy: int, **kwargs: Any) -> Any:
    request = thread_pb2.SendMessageRequest(content=content, thread_id=thread_id, on_busy=on_busy)
    return api.threads.SendMessage(request, metadata=api.metadata, **kwargs)


async def _drain(call: Any) -> list[thread_pb2.SendMessageResponse]:
    """The rest of a stream's events (with ``read``: the slow stream's first
    ones were read so)."""
    events = []
    while (event := await call.read()) is not aio.EOF:
        events.append(event)
    return events


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    listed = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)
    )
    return list(listed.messages)


async def _started_slow_reply(api: Api, llm: ScriptedLLM) -> tuple[str, Any]:
    """A thread with one exchange, and a slow reply streaming on it whose
    first delta has arrived."""
    first = await api.send(content="hello")
    thread_id = first[0].started.thread_id
    llm.script(SLOW)
    slow = _send(api, thread_id, "slow one", thread_pb2.ON_BUSY_REJECT)
    while not (await slow.read()).HasField("delta"):
        pass
    return thread_id, slow


async def _tickets(loom: Loom, thread_id: str) -> list[dict[str, Any]]:
    prefix = "^" + re.escape(f"{thread_id}/queue/")
    return await loom.store.db["leases"].find({"_id": {"$regex": prefix}}).to_list(None)


async def _count(loom: Loom, thread_id: str) -> int:
    return len(await _tickets(loom, thread_id))


async def _eventually_tickets(loom: Loom, thread_id: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 30
    while loop.time() < give_up:
        if await _count(loom, thread_id) == n:
            return
        await asyncio.sleep(0.02)
    left = await _tickets(loom, thread_id)
    raise AssertionError(f"{left} queued at {datetime.now(UTC)}, not {n} tickets")


async def _hold_thread(loom: Loom, api: Api, thread_id: str) -> None:
    """Make the thread busy with a lease of a holder that never ends (until
    the test deletes it): waits that do not depend on a reply's speed."""
    tenant = (await loom.keys.authenticate(api.key)).tenant
    await loom.store.db["leases"].insert_one(
        {
            "_id": thread_id,
            "tenant": tenant,
            "owner": "a-holder-in-the-test",
            "expires": datetime.now(UTC) + timedelta(seconds=60),
            "purpose": "reply",
            "epoch": 1,
        }
    )


async def test_reject_refuses_a_second_message_as_before(api: Api, llm: ScriptedLLM) -> None:
    thread_id, slow = await _started_slow_reply(api, llm)
    for mode in (thread_pb2.ON_BUSY_UNSPECIFIED, thread_pb2.ON_BUSY_REJECT):
        await expect_error(
            _send(api, thread_id, "too soon", mode), grpc.StatusCode.ABORTED, "THREAD_BUSY"
        )
    rest = await _drain(slow)
    assert rest[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert len(await _messages(api, thread_id)) == 4


async def test_enqueue_answers_after_the_running_reply_in_order(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    thread_id, slow = await _started_slow_reply(api, llm)
    second = asyncio.create_task(
        _drain(_send(api, thread_id, "second", thread_pb2.ON_BUSY_ENQUEUE))
    )
    await _eventually_tickets(loom, thread_id, 1)
    third = asyncio.create_task(_drain(_send(api, thread_id, "third", thread_pb2.ON_BUSY_ENQUEUE)))
    await _eventually_tickets(loom, thread_id, 2)
    first_events = await _drain(slow)
    assert first_events[-1].completed.message.content == SLOW.text
    second_events, third_events = await second, await third
    assert second_events[-1].completed.message.content == "Echo: second"
    assert third_events[-1].completed.message.content == "Echo: third"
    messages = await _messages(api, thread_id)
    assert [m.content for m in messages[2:]] == [
        "slow one",
        SLOW.text,
        "second",
        "Echo: second",
        "third",
        "Echo: third",
    ]
    # The queued message was answered with the running reply in its prompt.
    prompt = [m["content"] for m in llm.requests[-2].body["messages"]]
    assert SLOW.text in prompt
    assert prompt[-1] == "second"
    assert await _count(loom, thread_id) == 0


async def test_interrupt_stops_the_running_reply_and_answers_with_both(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    thread_id, slow = await _started_slow_reply(api, llm)
    newer = asyncio.create_task(
        _drain(_send(api, thread_id, "stop, I meant this", thread_pb2.ON_BUSY_INTERRUPT))
    )
    error = await expect_error(_drain(slow), grpc.StatusCode.ABORTED, "REPLY_INTERRUPTED")
    assert "interrupted" in error.details()
    events = await newer
    assert events[-1].completed.message.content == "Echo: stop, I meant this"
    messages = await _messages(api, thread_id)
    interrupted = messages[3]
    assert interrupted.status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
    assert interrupted.content
    assert SLOW.text.startswith(interrupted.content)
    assert interrupted.content != SLOW.text
    assert [m.content for m in messages[4:]] == ["stop, I meant this", "Echo: stop, I meant this"]
    prompt = [m["content"] for m in llm.requests[-1].body["messages"]]
    assert "slow one" in prompt
    assert interrupted.content in prompt
    assert await _count(loom, thread_id) == 0


async def test_a_run_waiting_for_tool_outputs_is_refused_in_every_mode(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    """Nothing runs to wait for or to stop: the message is refused at once,
    naming the run, and nothing is queued."""
    tool = json_format.ParseDict(
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        tools_pb2.Tool(),
    )
    llm.script(Reply(tool_calls=[{"id": "call_t", "name": "get_time", "arguments": "{}"}]))
    events = await api.send(content="what time is it?", tools=[tool])
    required = events[-1].tool_calls_required
    thread_id = events[0].started.thread_id
    for mode in (thread_pb2.ON_BUSY_ENQUEUE, thread_pb2.ON_BUSY_INTERRUPT):
        error = await expect_error(
            _send(api, thread_id, "hello?", mode), grpc.StatusCode.ABORTED, "THREAD_BUSY"
        )
        assert required.run_id in error.details()
    assert await _count(loom, thread_id) == 0
    assert len(await _messages(api, thread_id)) == 2


async def test_a_full_queue_is_refused_with_retry_info(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    thread_id = (await api.send(content="hello"))[0].started.thread_id
    await _hold_thread(loom, api, thread_id)
    limit = loom.settings.max_queued_per_thread
    waiters = [_send(api, thread_id, f"m{i}", thread_pb2.ON_BUSY_ENQUEUE) for i in range(limit)]
    tasks = [asyncio.create_task(_drain(call)) for call in waiters]
    await _eventually_tickets(loom, thread_id, limit)
    error = await expect_error(
        _send(api, thread_id, "one more", thread_pb2.ON_BUSY_INTERRUPT),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "THREAD_QUEUE_FULL",
    )
    assert retry_delay(error) > 0
    for call in waiters:  # the callers go away: their tickets leave with them
        call.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _eventually_tickets(loom, thread_id, 0)
    await loom.store.db["leases"].delete_one({"_id": thread_id})
    assert len(await _messages(api, thread_id)) == 2  # nothing stored for the waiters


async def test_a_deadline_while_queued_stores_nothing(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    thread_id = (await api.send(content="hello"))[0].started.thread_id
    await _hold_thread(loom, api, thread_id)
    await expect_error(
        _send(api, thread_id, "in a hurry", thread_pb2.ON_BUSY_ENQUEUE, timeout=0.5),
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    await _eventually_tickets(loom, thread_id, 0)
    await loom.store.db["leases"].delete_one({"_id": thread_id})
    assert len(await _messages(api, thread_id)) == 2
    events = await _drain(_send(api, thread_id, "now", thread_pb2.ON_BUSY_ENQUEUE))
    assert events[-1].completed.message.sequence == 3


async def test_a_dead_waiter_blocks_the_queue_one_lease_at_most(
    api: Api, llm: ScriptedLLM, loom: Loom
) -> None:
    """A waiter whose replica died leaves its ticket at the head of the
    queue; the next waiter passes it once it lapses, and removes it."""
    thread_id = (await api.send(content="hello"))[0].started.thread_id
    tenant = (await loom.keys.authenticate(api.key)).tenant
    await loom.store.db["leases"].insert_one(
        {
            "_id": f"{thread_id}/queue/0000000000000000-000000-dead",
            "tenant": tenant,
            "expires": datetime.now(UTC) + timedelta(seconds=1),
        }
    )
    events = await _drain(_send(api, thread_id, "after the dead", thread_pb2.ON_BUSY_ENQUEUE))
    assert events[-1].completed.message.content == "Echo: after the dead"
    assert await _count(loom, thread_id) == 0


async def test_a_repeat_of_a_long_queued_request_waits_for_it(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    """A request id whose first attempt waits in the queue for longer than
    a dead attempt's claim lasts is not run a second time by its repeat."""
    loom = await start_loom(
        make_settings(ferretdb, llm, mongodb_db="loom_on_busy_repeat", lease_seconds=1.0)
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            thread_id = (await api.send(content="hello"))[0].started.thread_id
            await _hold_thread(loom, api, thread_id)
            fields = {"request_id": "r-queued"}
            first = asyncio.create_task(_drain(_queued(api, thread_id, fields)))
            await _eventually_tickets(loom, thread_id, 1)
            await asyncio.sleep(2.5)  # past two lease lifetimes: a dead attempt's claim lapses
            repeat = asyncio.create_task(_drain(_queued(api, thread_id, fields)))
            await asyncio.sleep(0.5)
            await loom.store.db["leases"].delete_one({"_id": thread_id})
            answers = [(await first)[-1], (await repeat)[-1]]
            ids = {a.completed.message.message_id for a in answers}
            assert len(ids) == 1
            contents = [m.content for m in await _messages(api, thread_id)]
            assert contents.count("once") == 1
    finally:
        await loom.stop(0)


async def test_a_shutdown_ends_the_waits_of_its_replica(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    """A queued message is told the server is stopping (and sends again to
    another replica) instead of holding the shutdown for its whole grace."""
    loom = await start_loom(make_settings(ferretdb, llm, mongodb_db="loom_on_busy_stop"))
    async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
        api = Api(channel, await new_tenant_key(loom))
        thread_id = (await api.send(content="hello"))[0].started.thread_id
        await _hold_thread(loom, api, thread_id)
        waiting = asyncio.create_task(
            expect_error(
                _send(api, thread_id, "later", thread_pb2.ON_BUSY_ENQUEUE),
                grpc.StatusCode.UNAVAILABLE,
                "SERVER_SHUTTING_DOWN",
            )
        )
        await _eventually_tickets(loom, thread_id, 1)
        leases = loom.store.db["leases"]
        stopping = asyncio.create_task(loom.stop(0.5))
        await waiting
        left = await leases.count_documents({"_id": {"$regex": "^" + re.escape(thread_id)}})
        await stopping
    assert left == 1  # the test's own lease; the ticket is gone


def _queued(api: Api, thread_id: str, fields: dict[str, str]) -> Any:
    request = thread_pb2.SendMessageRequest(
        content="once", thread_id=thread_id, on_busy=thread_pb2.ON_BUSY_ENQUEUE, **fields
    )
    return api.threads.SendMessage(request, metadata=api.metadata)


@pytest.fixture
async def other_replica(ferretdb: FerretDB, llm: ScriptedLLM, loom: Loom) -> AsyncIterator[Loom]:
    """A second replica on the session server's database."""
    other = await start_loom(make_settings(ferretdb, llm, mongodb_db=loom.settings.mongodb_db))
    yield other
    await other.stop(0)


@pytest.mark.parametrize("mode", [thread_pb2.ON_BUSY_ENQUEUE, thread_pb2.ON_BUSY_INTERRUPT])
async def test_waiting_holds_across_replicas(
    api: Api, llm: ScriptedLLM, loom: Loom, other_replica: Loom, mode: int
) -> None:
    thread_id, slow = await _started_slow_reply(api, llm)
    async with aio.insecure_channel(f"127.0.0.1:{other_replica.port}") as channel:
        there = Api(channel, api.key)
        newer = asyncio.create_task(_drain(_send(there, thread_id, "from afar", mode)))
        if mode == thread_pb2.ON_BUSY_INTERRUPT:
            await expect_error(_drain(slow), grpc.StatusCode.ABORTED, "REPLY_INTERRUPTED")
            status = thread_pb2.MESSAGE_STATUS_INCOMPLETE
        else:
            assert (await _drain(slow))[-1].completed.message.content == SLOW.text
            status = thread_pb2.MESSAGE_STATUS_COMPLETE
        events = await newer
    assert events[-1].completed.message.content == "Echo: from afar"
    messages = await _messages(api, thread_id)
    assert messages[3].status == status
    assert [m.content for m in messages[4:]] == ["from afar", "Echo: from afar"]
    assert await _count(loom, thread_id) == 0
