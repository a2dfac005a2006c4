"""How a reply ends when things go wrong: cancellation, model failure, retries
with a request_id, crashed lease holders and restarts."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import thread_pb2
from service.core.assistants import Assistants
from service.core.conversation import SendRequest
from service.core.errors import LoomError
from service.core.models import (
    ContextEntry,
    Delta,
    MemoryMode,
    MessageStatus,
    Recalled,
    ReplyEvent,
    Role,
)
from service.core.shield import Shield
from service.core.threads import Threads
from service.server import Loom, build_conversation, build_jobs, build_model
from service.store import connect
from service.store.scoped import key
from service.telemetry import Telemetry
from tests.conftest import Api, eventually, expect_error, make_settings, new_tenant_key, start_loom
from tests.scripted_llm import Fail, Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    return list(page.messages)


async def _new_thread(api: Api) -> str:
    events = await api.send(content="hello")
    return events[0].started.thread_id


async def test_caller_cancel_keeps_partial_reply_and_closes_model_request(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _new_thread(api)
    llm.script(Reply(chunks=["first ", "second ", "third ", "fourth"], chunk_delay=0.3))
    call = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="tell me a long story", thread_id=thread_id),
        metadata=api.metadata,
    )
    started = await call.read()
    first = await call.read()
    assert first.delta.text == "first "
    call.cancel()
    assert await eventually(lambda: llm.disconnects >= 1), "model request not closed"

    async def settled() -> thread_pb2.Message:
        for _ in range(100):
            reply = (await _messages(api, thread_id))[-1]
            if reply.status != thread_pb2.MESSAGE_STATUS_IN_PROGRESS:
                return reply
            await asyncio.sleep(0.05)
        raise AssertionError("reply never left IN_PROGRESS")

    reply = await settled()
    assert reply.message_id == started.started.assistant_message_id
    assert reply.status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
    assert reply.content.startswith("first ")
    assert "fourth" not in reply.content
    # The thread is usable at once and the next prompt replays the partial reply.
    llm.reset()
    after = await api.send(content="go on", thread_id=thread_id)
    assert after[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    replayed = [m["content"] for m in llm.requests[0].body["messages"]]
    assert reply.content in replayed
    assert [m.sequence for m in await _messages(api, thread_id)] == list(range(6))


async def test_model_failure_mid_stream_stores_failed_reply(api: Api, llm: ScriptedLLM) -> None:
    thread_id = await _new_thread(api)
    llm.reset()
    llm.script(Reply(chunks=["partial ", "answer ", "lost"], break_after=2))
    call = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="fail please", thread_id=thread_id),
        metadata=api.metadata,
    )
    error = await expect_error(call, grpc.StatusCode.UNAVAILABLE, "MODEL_STREAM_BROKEN")
    assert "mid-stream" in error.details()
    # Text had reached the caller, so the model was not asked again.
    assert len(llm.requests) == 1
    messages = await _messages(api, thread_id)
    reply = messages[-1]
    assert reply.status == thread_pb2.MESSAGE_STATUS_FAILED
    assert reply.content == "partial answer "
    assert [m.sequence for m in messages] == [0, 1, 2, 3]
    after = await api.send(content="again", thread_id=thread_id)
    assert after[-1].completed.message.sequence == 5


async def test_stream_broken_before_first_token_is_retried(api: Api, llm: ScriptedLLM) -> None:
    llm.script(Reply(chunks=["never"], break_after=0), Reply(text="second try"))
    events = await api.send(content="hi")
    assert events[-1].completed.message.content == "second try"
    assert len(llm.requests) == 2


async def test_request_id_replays_without_calling_model_again(api: Api, llm: ScriptedLLM) -> None:
    llm.script(Reply(text="the one and only reply"))
    first = await api.send(content="remember me", request_id="req-1")
    again = await api.send(content="remember me", request_id="req-1")
    assert len(llm.requests) == 1
    assert again[0].started == first[0].started
    assert again[0].started.thread_created
    assert again[-1].completed.message == first[-1].completed.message
    assert "".join(e.delta.text for e in again if e.HasField("delta")) == "the one and only reply"
    thread_id = first[0].started.thread_id
    assert len(await _messages(api, thread_id)) == 2
    page = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in page.threads] == [thread_id]

    await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="something else", request_id="req-1"),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


async def test_request_id_retry_after_model_outage_runs_once_in_same_slot(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _new_thread(api)
    llm.script(*[Fail(status=503)] * 3)
    await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="q", thread_id=thread_id, request_id="r-2"),
            metadata=api.metadata,
        ),
        grpc.StatusCode.UNAVAILABLE,
        "MODEL_UNAVAILABLE",
    )
    failed = await _messages(api, thread_id)
    assert failed[-1].status == thread_pb2.MESSAGE_STATUS_FAILED
    llm.script(Reply(text="recovered"))
    retry = await api.send(content="q", thread_id=thread_id, request_id="r-2")
    assert retry[-1].completed.message.content == "recovered"
    assert retry[-1].completed.message.message_id == failed[-1].message_id
    messages = await _messages(api, thread_id)
    assert [m.content for m in messages] == ["hello", messages[1].content, "q", "recovered"]
    # Third time: replayed, no new model call.
    before = len(llm.requests)
    await api.send(content="q", thread_id=thread_id, request_id="r-2")
    assert len(llm.requests) == before


async def test_request_ids_are_scoped_to_the_tenant(
    api: Api, loom: Loom, channel: aio.Channel, llm: ScriptedLLM
) -> None:
    other = Api(channel, await new_tenant_key(loom))
    mine = await api.send(content="same words", request_id="shared-id")
    theirs = await other.send(content="same words", request_id="shared-id")
    assert mine[0].started.thread_id != theirs[0].started.thread_id
    assert len(llm.requests) == 2


async def test_expired_lease_of_a_crashed_holder_is_taken_over(
    api: Api, loom: Loom, llm: ScriptedLLM
) -> None:
    thread_id = await _new_thread(api)
    tenant = (await loom.keys.authenticate(api.key)).tenant
    # A replica died mid-reply: it had stored the user's message and part of
    # the reply, but not yet the thread's context or count, and its lease is
    # past expiry.
    now = datetime.now(UTC)
    base = {"tenant": tenant, "thread_id": thread_id, "create_time": now, "metadata": {}}
    await loom.store.db["messages"].insert_many(
        [
            {
                **base,
                "_id": key(tenant, "msg_" + "d" * 24),
                "role": "user",
                "content": "dead question",
                "status": "complete",
                "sequence": 2,
            },
            {
                **base,
                "_id": key(tenant, "msg_" + "e" * 24),
                "role": "assistant",
                "content": "half an ans",
                "status": "in_progress",
                "sequence": 3,
                "model": "scripted-model",
            },
        ]
    )
    await loom.store.db["leases"].insert_one(
        {
            "_id": thread_id,
            "tenant": tenant,
            "owner": "dead-replica",
            "expires": now - timedelta(seconds=1),
            "reply_id": "msg_" + "e" * 24,
        }
    )
    llm.reset()
    events = await api.send(content="anyone there?", thread_id=thread_id)
    assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert events[-1].completed.message.sequence == 5
    after = await _messages(api, thread_id)
    assert [m.sequence for m in after] == list(range(6))
    assert after[3].status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
    assert after[3].content == "half an ans"
    sent = [m["content"] for m in llm.requests[0].body["messages"]]
    assert sent[-3:] == ["dead question", "half an ans", "anyone there?"]
    thread = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    assert thread.thread.message_count == 6
    # A live lease of another replica, by contrast, makes the thread busy.
    await loom.store.db["leases"].insert_one(
        {
            "_id": thread_id,
            "tenant": tenant,
            "owner": "live-replica",
            "expires": datetime.now(UTC) + timedelta(seconds=30),
        }
    )
    await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="busy?", thread_id=thread_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    await loom.store.db["leases"].delete_one({"_id": thread_id})


async def test_two_replicas_on_one_database_share_leases_and_sequences(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    settings = make_settings(ferretdb, llm, mongodb_db="loom_replicas")
    one, two = await start_loom(settings), await start_loom(settings)
    try:
        key = await new_tenant_key(one)
        async with (
            aio.insecure_channel(f"127.0.0.1:{one.port}") as ch1,
            aio.insecure_channel(f"127.0.0.1:{two.port}") as ch2,
        ):
            a, b = Api(ch1, key), Api(ch2, key)
            thread_id = await _new_thread(a)
            llm.set_default(Reply(chunk_delay=0.01))
            results = await asyncio.gather(
                *(
                    (a if i % 2 else b).send(content=f"m{i}", thread_id=thread_id)
                    for i in range(10)
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    assert isinstance(result, aio.AioRpcError)
                    assert result.code() == grpc.StatusCode.ABORTED
            ok = sum(not isinstance(r, BaseException) for r in results)
            assert ok >= 1
            sequences = [m.sequence for m in await _messages(b, thread_id)]
            assert sequences == list(range(2 + 2 * ok))
    finally:
        await one.stop(0)
        await two.stop(0)


async def test_concurrent_appends_from_many_clients_never_gap_or_duplicate(
    ferretdb: FerretDB,
) -> None:
    from service.core.models import Message, MessageStatus, Role
    from service.store import connect

    stores = [connect(ferretdb.uri, "loom_appends") for _ in range(4)]
    try:
        await stores[0].ensure_indexes()
        thread_id = "thread_" + "a" * 24

        async def append(i: int) -> int:
            message = Message(
                message_id=f"msg_{i:024x}",
                tenant="t",
                thread_id=thread_id,
                role=Role.USER,
                content=str(i),
                status=MessageStatus.COMPLETE,
                create_time=datetime.now(UTC),
            )
            stored = await stores[i % 4].messages.append(message, 0)
            return stored.sequence

        sequences = await asyncio.gather(*(append(i) for i in range(40)))
        assert sorted(sequences) == list(range(40))
    finally:
        for store in stores:
            await store.close()


async def test_restart_on_same_database_keeps_everything(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    settings = make_settings(ferretdb, llm, mongodb_db="loom_restart")
    first = await start_loom(settings)
    key = await new_tenant_key(first)
    async with aio.insecure_channel(f"127.0.0.1:{first.port}") as ch:
        api = Api(ch, key)
        events = await api.send(content="My favorite color is blue.")
        thread_id = events[0].started.thread_id
        await api.send(content="And I live in Lisbon.", thread_id=thread_id)
        before = await _messages(api, thread_id)
    await first.stop(0)

    second = await start_loom(settings)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
            api = Api(ch, key)
            assert await _messages(api, thread_id) == before
            thread = await api.call(
                api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)
            )
            assert thread.thread.message_count == 4
            llm.reset()
            await api.send(content="Where do I live?", thread_id=thread_id)
            contents = [m["content"] for m in llm.requests[0].body["messages"]]
            assert "My favorite color is blue." in contents
            assert "And I live in Lisbon." in contents
    finally:
        await second.stop(0)


class _FailingMemory:
    """A memory port whose episodic writes fail (and recall finds nothing):
    the reply loop must observe the failure however the reply ends."""

    async def recall(self, *_: object) -> list[Recalled]:
        return []

    async def remember(self, *_: object) -> None:
        raise RuntimeError("the memory index is down")

    async def schedule_extraction(self, *_: object) -> str:
        return ""

    async def forget_thread(self, *_: object) -> int:
        return 0

    async def forget_assistant(self, *_: object) -> None:
        return None


async def _end_reply(events: AsyncGenerator[ReplyEvent, None], ending: str) -> None:
    """Read the reply until it ends as ``ending`` says."""
    if ending == "model failed":
        with pytest.raises(LoomError):
            async for _ in events:
                pass
        return
    async for event in events:
        if ending == "caller went away" and isinstance(event, Delta):
            break
    await events.aclose()


@pytest.mark.parametrize("ending", ["completed", "model failed", "caller went away"])
async def test_a_failed_episodic_write_is_observed_however_the_reply_ends(
    ferretdb: FerretDB, llm: ScriptedLLM, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    settings = make_settings(ferretdb, llm)
    store = connect(settings.mongodb_uri.get_secret_value(), settings.mongodb_db)
    model = build_model(settings, Telemetry())
    shield = Shield()
    memory = _FailingMemory()
    assistants = Assistants(store.assistants, store.threads, store.messages, memory=memory)
    threads = Threads(assistants, store.threads, store.messages, memory=memory)
    conversation = build_conversation(
        settings,
        store=store,
        llm=model,
        shield=shield,
        jobs=build_jobs(settings, store, shield),
        assistants=assistants,
        threads=threads,
        memory=memory,
    )
    llm.script(
        Fail(status=400)
        if ending == "model failed"
        else Reply(chunks=["one ", "two ", "three"], chunk_delay=0.2)
    )
    request = SendRequest(content="My cat is called Miso.", user_id="u1", memory=MemoryMode.AUTO)
    events = conversation.send(f"t-{uuid.uuid4().hex[:12]}", request)
    try:
        with caplog.at_level(logging.WARNING, logger="service.core.reply.hooks"):
            await _end_reply(events, ending)
        failed = [r for r in caplog.records if "episodic memory write failed" in r.getMessage()]
        assert len(failed) == 1, f"the failed write went unobserved when the reply {ending}"
    finally:
        await shield.drain()
        await model.close()
        await store.close()


async def test_the_prompt_is_built_from_the_thread_as_read_under_its_lease(
    api: Api, loom: Loom, llm: ScriptedLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    thread_id = await _new_thread(api)
    tenant = (await loom.keys.authenticate(api.key)).tenant
    store = loom.store.threads
    read = store.get
    ended_between = False

    async def get_then_a_reply_ends(t: str, tid: str) -> Any:
        # The first read of the thread returns it as it was; right after, a
        # reply on another replica ends: its exchange is stored and cached.
        nonlocal ended_between
        thread = await read(t, tid)
        if tid == thread_id and not ended_between:
            ended_between = True
            now = datetime.now(UTC)
            base = {"tenant": tenant, "thread_id": thread_id, "create_time": now, "metadata": {}}
            await loom.store.db["messages"].insert_many(
                [
                    {
                        **base,
                        "_id": key(tenant, "msg_" + "3" * 24),
                        "role": "user",
                        "content": "asked in between",
                        "status": "complete",
                        "sequence": 2,
                    },
                    {
                        **base,
                        "_id": key(tenant, "msg_" + "4" * 24),
                        "role": "assistant",
                        "content": "answered in between",
                        "status": "complete",
                        "sequence": 3,
                    },
                ]
            )
            assert thread is not None
            cached = [
                *thread.context,
                ContextEntry(2, Role.USER, "asked in between", MessageStatus.COMPLETE),
                ContextEntry(3, Role.ASSISTANT, "answered in between", MessageStatus.COMPLETE),
            ]
            # Written under that replica's lease, as the last holder's epoch.
            await store.save_context(tenant, thread_id, cached, 4, now, epoch=thread.fence)
        return thread

    monkeypatch.setattr(store, "get", get_then_a_reply_ends)
    llm.reset()
    events = await api.send(content="and now?", thread_id=thread_id)
    assert ended_between
    assert events[-1].completed.message.sequence == 5
    sent = [m["content"] for m in llm.requests[0].body["messages"]]
    assert sent[-3:] == ["asked in between", "answered in between", "and now?"]
    monkeypatch.undo()
    # The context cached on the thread kept the exchange too.
    llm.reset()
    await api.send(content="and then?", thread_id=thread_id)
    sent = [m["content"] for m in llm.requests[0].body["messages"]]
    assert "answered in between" in sent
