"""AddMessages end to end: messages stored without a reply, in later prompts
and summaries, atomic, idempotent, refused on a busy thread, and remembered
with memory AUTO (one extraction job per batch)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from generated.loom.v1 import assistant_pb2, common_pb2, memory_pb2, thread_pb2, tools_pb2
from service.api.convert import new_message_from_pb
from service.core import ids
from service.core.batches import BatchRequest
from service.server import Loom
from service.store.scoped import key
from tests.conftest import Api, expect_error, new_tenant_key
from tests.scripted_llm import Reply, ScriptedLLM
from tests.test_memory import EXTRACT_MARK, Mem, Model

USER = thread_pb2.ROLE_USER
ASSISTANT = thread_pb2.ROLE_ASSISTANT
SYSTEM = thread_pb2.ROLE_SYSTEM
TOOL = thread_pb2.ROLE_TOOL


def _at(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _msg(role: int, content: str = "", **fields: Any) -> thread_pb2.Message:
    return thread_pb2.Message(role=role, content=content, **fields)


async def _add(api: Api, *messages: thread_pb2.Message, **fields: Any) -> Any:
    return await api.call(
        api.threads.AddMessages, thread_pb2.AddMessagesRequest(messages=messages, **fields)
    )


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    return list(page.messages)


async def _thread(api: Api, thread_id: str) -> thread_pb2.Thread:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread


async def _assistant(api: Api, **fields: Any) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(instructions="Be brief.", **fields)
        ),
    )
    return str(created.assistant.assistant_id)


async def test_imported_history_is_stored_in_order_and_in_the_next_prompt(
    api: Api, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(api)
    start = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    added = await _add(
        api,
        _msg(SYSTEM, "The customer is on the premium plan.", create_time=_at(start)),
        _msg(USER, "My order #123 is late.", create_time=_at(start), metadata={"src": "crm"}),
        _msg(ASSISTANT, "Sorry! It ships today.", create_time=_at(start + timedelta(minutes=1))),
        _msg(USER, "Thanks.", create_time=_at(start + timedelta(minutes=2))),
        assistant_id=assistant_id,
        user_id="alice",
    )
    assert added.thread_created
    assert not llm.requests, "AddMessages must not call the model"
    thread_id = added.thread.thread_id
    assert added.thread.assistant_id == assistant_id
    assert added.thread.user_id == "alice"
    assert added.thread.message_count == 4
    assert [m.sequence for m in added.messages] == [0, 1, 2, 3]
    assert all(m.status == thread_pb2.MESSAGE_STATUS_COMPLETE for m in added.messages)
    assert all(m.message_id.startswith("msg_") for m in added.messages)
    assert added.messages[1].create_time.ToDatetime(tzinfo=UTC) == start
    assert added.messages[1].metadata["src"] == "crm"
    listed = await _messages(api, thread_id)
    assert [(m.role, m.content) for m in listed] == [(m.role, m.content) for m in added.messages]

    llm.script(Reply(text="You are welcome."))
    events = await api.send(content="Is it on its way now?", thread_id=thread_id)
    assert events[-1].completed.message.sequence == 5
    sent = [(m["role"], m["content"]) for m in llm.requests[0].body["messages"]]
    assert sent[1:] == [
        ("system", "The customer is on the premium plan."),
        ("user", "My order #123 is late."),
        ("assistant", "Sorry! It ships today."),
        ("user", "Thanks."),
        ("user", "Is it on its way now?"),
    ]
    # A second batch appends after the reply.
    more = await _add(api, _msg(ASSISTANT, "An agent wrote this."), thread_id=thread_id)
    assert not more.thread_created
    assert [m.sequence for m in more.messages] == [6]
    assert more.messages[0].create_time.seconds > start.timestamp()  # stamped at the call
    assert (await _thread(api, thread_id)).message_count == 7


async def test_tool_calls_and_outputs_are_stored_in_the_shapes_replies_use(
    api: Api, llm: ScriptedLLM
) -> None:
    call = tools_pb2.ToolCall(tool_call_id="call_7", name="lookup", arguments='{"id": 7}')
    added = await _add(
        api,
        _msg(USER, "Where is order 7?"),
        _msg(ASSISTANT, "", tool_calls=[call]),
        _msg(TOOL, '{"status": "shipped"}', tool_call_id="call_7"),
        _msg(ASSISTANT, "It has shipped."),
    )
    stored = added.messages
    assert stored[1].tool_calls[0].name == "lookup"
    assert stored[2].tool_call_id == "call_7"
    llm.script(Reply(text="ok"))
    await api.send(content="And order 8?", thread_id=added.thread.thread_id)
    sent = llm.requests[0].body["messages"]
    calls = [m for m in sent if m.get("tool_calls")]
    assert calls[0]["tool_calls"][0]["id"] == "call_7"
    assert calls[0]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"id": 7}'}
    outputs = [m for m in sent if m["role"] == "tool"]
    assert outputs == [
        {"role": "tool", "content": '{"status": "shipped"}', "tool_call_id": "call_7"}
    ]


_NOW = datetime.now(UTC)
_CALL = tools_pb2.ToolCall(tool_call_id="c1", name="f", arguments="{}")


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "messages is empty"),
        ([_msg(USER, "x")] * 1001, "the limit is 1,000"),
        ([_msg(thread_pb2.ROLE_UNSPECIFIED, "x")], "messages[0].role"),
        ([_msg(USER, "hi"), _msg(USER, "   ")], "messages[1].content is required"),
        ([_msg(USER, "x" * 100_001)], "messages[0].content is 100,001 characters"),
        ([_msg(USER, "x", create_time=_at(_NOW + timedelta(hours=1)))], "in the future"),
        (
            [
                _msg(USER, "a", create_time=_at(_NOW - timedelta(hours=1))),
                _msg(USER, "b", create_time=_at(_NOW - timedelta(hours=2))),
            ],
            "messages[1].create_time is earlier",
        ),
        ([_msg(TOOL, "out", tool_call_id="nope")], "answers no tool call"),
        (
            [
                _msg(ASSISTANT, "", tool_calls=[_CALL]),
                _msg(TOOL, "1", tool_call_id="c1"),
                _msg(TOOL, "2", tool_call_id="c1"),
            ],
            "already answered",
        ),
        ([_msg(USER, "x", tool_calls=[_CALL])], "only for assistant messages"),
        ([_msg(TOOL, "out")], "messages[0].tool_call_id is required"),
        (
            [
                _msg(
                    ASSISTANT,
                    "",
                    tool_calls=[
                        tools_pb2.ToolCall(tool_call_id="c", name="f", arguments="{not json")
                    ],
                )
            ],
            "must be JSON text",
        ),
    ],
)
async def test_bad_batches_are_refused_and_store_nothing(
    api: Api, messages: list[thread_pb2.Message], needle: str
) -> None:
    error = await expect_error(_add(api, *messages), grpc.StatusCode.INVALID_ARGUMENT)
    assert needle in error.details(), error.details()
    threads = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert list(threads.threads) == [], "no thread may be left behind"


async def test_a_bad_batch_on_a_thread_changes_nothing(api: Api) -> None:
    first = await _add(api, _msg(USER, "one"), _msg(ASSISTANT, "two"))
    thread_id = first.thread.thread_id
    last = first.messages[-1].create_time.ToDatetime(tzinfo=UTC)
    await expect_error(
        _add(api, _msg(TOOL, "x", tool_call_id="c9"), thread_id=thread_id),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    earlier = _msg(USER, "old", create_time=_at(last - timedelta(days=1)))
    error = await expect_error(
        _add(api, earlier, thread_id=thread_id), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert "earlier than the thread's last message" in error.details()
    assert [m.content for m in await _messages(api, thread_id)] == ["one", "two"]
    assert (await _thread(api, thread_id)).message_count == 2


async def test_a_busy_thread_refuses_a_batch_like_a_send(api: Api, llm: ScriptedLLM) -> None:
    first = await api.send(content="hello")
    thread_id = first[0].started.thread_id
    llm.script(Reply(text="a slow reply in many parts", chunk_delay=0.3))
    slow = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="slow one", thread_id=thread_id),
        metadata=api.metadata,
    )
    assert (await slow.read()).HasField("started")
    await expect_error(
        _add(api, _msg(USER, "too soon"), thread_id=thread_id),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    while await slow.read() is not aio.EOF:
        pass
    after = await _add(api, _msg(USER, "now"), thread_id=thread_id)
    assert [m.sequence for m in after.messages] == [4]


async def test_request_id_makes_a_retry_return_the_first_result(api: Api) -> None:
    batch = [_msg(USER, "imported question"), _msg(ASSISTANT, "imported answer")]
    first = await _add(api, *batch, request_id="import-1")
    again = await _add(api, *batch, request_id="import-1")
    assert again.thread.thread_id == first.thread.thread_id
    assert again.thread_created
    assert [m.message_id for m in again.messages] == [m.message_id for m in first.messages]
    assert len(await _messages(api, first.thread.thread_id)) == 2
    threads = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert len(threads.threads) == 1
    await expect_error(
        _add(api, _msg(USER, "something else"), request_id="import-1"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    # Request ids are shared with SendMessage: one id, one request.
    await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="imported question", request_id="import-1"),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )


async def _dead_writer(
    loom: Loom, api: Api, thread_id: str, start: int, count: int, **ids_of: Any
) -> list[str]:
    """Leave the state a writer that died mid-batch leaves: the batch open on
    the thread, its first messages stored, its lease expired."""
    tenant = (await loom.keys.authenticate(api.key)).tenant
    now = datetime.now(UTC)
    made = ids_of.get("message_ids") or [ids.new_id(ids.MESSAGE) for _ in range(count)]
    await loom.store.db["threads"].update_one(
        {"_id": key(tenant, thread_id)}, {"$set": {"open_batch": start}}
    )
    await loom.store.db["messages"].insert_many(
        [
            {
                "_id": key(tenant, made[i]),
                "tenant": tenant,
                "thread_id": thread_id,
                "role": "user",
                "content": f"half-imported {i}",
                "status": "complete",
                "sequence": start + i,
                "create_time": now,
                "metadata": {},
            }
            for i in range(count)
        ]
    )
    await loom.store.db["leases"].insert_one(
        {"_id": thread_id, "tenant": tenant, "owner": "dead", "expires": now - timedelta(seconds=1)}
    )
    return made


async def test_a_batch_whose_writer_died_is_hidden_then_rolled_back(
    api: Api, loom: Loom, llm: ScriptedLLM
) -> None:
    added = await _add(api, _msg(USER, "kept 0"), _msg(ASSISTANT, "kept 1"))
    thread_id = added.thread.thread_id
    await _dead_writer(loom, api, thread_id, start=2, count=3)
    # Readers never see the half batch.
    assert [m.content for m in await _messages(api, thread_id)] == ["kept 0", "kept 1"]
    assert (await _thread(api, thread_id)).message_count == 2
    # The next holder of the lease deletes it before anything else.
    llm.script(Reply(text="fresh reply"))
    events = await api.send(content="after the crash", thread_id=thread_id)
    assert events[-1].completed.message.sequence == 3
    assert [m.content for m in await _messages(api, thread_id)] == [
        "kept 0",
        "kept 1",
        "after the crash",
        "fresh reply",
    ]
    sent = [m["content"] for m in llm.requests[0].body["messages"]]
    assert not any("half-imported" in c for c in sent)


async def test_a_retry_after_the_first_attempt_died_stores_the_batch_once(
    api: Api, loom: Loom
) -> None:
    base = await _add(api, _msg(USER, "kept"))
    thread_id = base.thread.thread_id
    tenant = (await loom.keys.authenticate(api.key)).tenant
    batch = [_msg(USER, "half-imported 0"), _msg(USER, "half-imported 1")]
    request = thread_pb2.AddMessagesRequest(messages=batch, thread_id=thread_id, request_id="r-9")
    # The first attempt claimed the id long ago, stored one message of two, and died.
    derived = [ids.derived_id(ids.MESSAGE, tenant, "r-9", str(i)) for i in range(2)]
    await _dead_writer(loom, api, thread_id, start=1, count=1, message_ids=derived)
    fingerprint = BatchRequest(
        messages=[new_message_from_pb(m) for m in batch], thread_id=thread_id, request_id="r-9"
    ).fingerprint()
    await loom.store.db["requests"].insert_one(
        {
            "_id": key(tenant, "r-9"),
            "tenant": tenant,
            "fingerprint": fingerprint,
            "create_time": datetime.now(UTC) - timedelta(hours=1),
        }
    )
    again = await api.call(api.threads.AddMessages, request)
    assert [m.message_id for m in again.messages] == derived
    assert [m.sequence for m in again.messages] == [1, 2]
    assert [m.content for m in await _messages(api, thread_id)] == [
        "kept",
        "half-imported 0",
        "half-imported 1",
    ]
    assert (await _thread(api, thread_id)).message_count == 3


SUMMARY_MARK = "You keep the running summary"


async def test_imported_messages_are_folded_into_the_summary(api: Api, llm: ScriptedLLM) -> None:
    def route(body: dict[str, Any]) -> Reply:
        if body["messages"][0]["content"].startswith(SUMMARY_MARK):
            return Reply(text="Summary of the imported talk.")
        return Reply(text="ok")

    llm.set_default(route)
    assistant_id = await _assistant(api, context_window=1024)
    batch = [
        _msg(USER if i % 2 == 0 else ASSISTANT, f"Imported line {i} about topic {i} " * 3)
        for i in range(200)
    ]
    added = await _add(api, *batch, assistant_id=assistant_id)
    thread_id = added.thread.thread_id

    async def folded() -> bool:
        return (await _thread(api, thread_id)).HasField("summary")

    for _ in range(200):
        if await folded():
            break
        await asyncio.sleep(0.05)
    thread = await _thread(api, thread_id)
    assert thread.summary.text == "Summary of the imported talk."
    assert 0 < thread.summary.through_sequence < 199
    summary_requests = [
        r.body
        for r in llm.requests
        if r.body and r.body["messages"][0]["content"].startswith(SUMMARY_MARK)
    ]
    assert "Imported line 0" in summary_requests[0]["messages"][1]["content"]


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


async def test_memory_auto_remembers_a_batch_with_one_extraction_job(
    mem: Mem, loom: Loom, llm: ScriptedLLM
) -> None:
    model = Model()
    model.facts["allergic to peanuts"] = ["The user is allergic to peanuts."]
    llm.set_default(model)
    assistant_id = await _assistant(mem, memory_mode=common_pb2.MEMORY_MODE_AUTO)
    added = await _add(
        mem,
        _msg(USER, "I'm allergic to peanuts."),
        _msg(ASSISTANT, "Noted."),
        _msg(USER, "My cat is called Miso."),
        _msg(ASSISTANT, "Cute."),
        assistant_id=assistant_id,
        user_id="u1",
    )
    operation_id = added.memory_operation_id
    assert operation_id.startswith("memop_")
    for _ in range(300):
        got = await mem.call(
            mem.memory.GetMemoryOperation,
            memory_pb2.GetMemoryOperationRequest(operation_id=operation_id),
        )
        if got.operation.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED:
            break
        await asyncio.sleep(0.05)
    assert got.operation.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
    assert got.operation.thread_id == added.thread.thread_id
    extractions = [
        r.body for r in llm.requests if r.body and EXTRACT_MARK in r.body["messages"][0]["content"]
    ]
    assert len(extractions) == 1, "one extraction job for the whole batch"
    exchange = extractions[0]["messages"][-1]["content"]
    assert "allergic to peanuts" in exchange
    assert "Miso" in exchange
    tenant = (await loom.keys.authenticate(mem.key)).tenant
    jobs = await loom.store.db["jobs"].count_documents({"tenant": tenant, "kind": "memory.extract"})
    assert jobs == 1
    # The user messages were indexed at once: a new thread recalls them.
    listed = await mem.call(
        mem.memory.ListMemories,
        memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, user_id="u1", page_size=100),
    )
    contents = {m.content for m in listed.memories}
    assert {
        "I'm allergic to peanuts.",
        "My cat is called Miso.",
        "The user is allergic to peanuts.",
    } <= contents
    assert "Noted." not in contents

    # Memory OFF for a batch: nothing learnt.
    quiet = await _add(
        mem,
        _msg(USER, "I live in Lyon."),
        assistant_id=assistant_id,
        user_id="u1",
        memory=common_pb2.MEMORY_MODE_OFF,
    )
    assert quiet.memory_operation_id == ""


async def test_a_thread_deleted_with_its_memories_while_its_batch_is_indexed_keeps_none(
    mem: Mem, loom: Loom, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DeleteThread(delete_memories) lands while AddMessages indexes its
    batch: the deletion's forgetting runs first, the batch's write after it;
    the write is undone, so nothing learnt in the deleted thread is left."""
    assistant_id = await _assistant(mem, memory_mode=common_pb2.MEMORY_MODE_AUTO)
    first = await _add(mem, _msg(USER, "hello"), assistant_id=assistant_id, user_id="u1")
    thread_id = first.thread.thread_id
    tenant = (await loom.keys.authenticate(mem.key)).tenant
    memory = loom.threads._memory
    assert memory is not None
    index = memory.remember_all

    async def racing(*args: Any) -> None:
        await loom.threads.delete(tenant, thread_id, forget=True)
        await index(*args)

    monkeypatch.setattr(memory, "remember_all", racing)
    await _add(mem, _msg(USER, "My locker code is 4711."), thread_id=thread_id)
    monkeypatch.undo()
    listed = await mem.call(
        mem.memory.ListMemories,
        memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, user_id="u1", page_size=100),
    )
    assert [m.content for m in listed.memories] == []
