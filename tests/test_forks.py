"""ForkThread end to end, and the edit and regenerate flows it serves:
copies up to a sequence, the original untouched, forks of forks, the
summary carried only when it fits, busy threads, and SendMessage with empty
content answering the last user message again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
from grpc import aio

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core import ids
from service.server import Loom
from service.store.scoped import key
from tests.conftest import Api, expect_error
from tests.scripted_llm import Reply, ScriptedLLM
from tests.test_tools import WEATHER, Model, _tool

SUMMARY_MARK = "You keep the running summary"


async def _fork(api: Api, thread_id: str, through: int) -> thread_pb2.Thread:
    forked = await api.call(
        api.threads.ForkThread,
        thread_pb2.ForkThreadRequest(thread_id=thread_id, through_sequence=through),
    )
    return forked.thread


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    return list(page.messages)


async def _thread(api: Api, thread_id: str) -> thread_pb2.Thread:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread


async def _conversation(api: Api, llm: ScriptedLLM, turns: int, **fields: Any) -> str:
    llm.set_default(lambda body: Reply(text=f"Answer to: {body['messages'][-1]['content']}"))
    first = await api.send(content="Question 0", **fields)
    thread_id = first[0].started.thread_id
    for i in range(1, turns):
        await api.send(content=f"Question {i}", thread_id=thread_id)
    return str(thread_id)


async def test_a_fork_holds_copies_up_to_a_sequence_and_the_original_is_untouched(
    api: Api, llm: ScriptedLLM
) -> None:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="x")),
    )
    assistant_id = created.assistant.assistant_id
    thread_id = await _conversation(api, llm, 3, assistant_id=assistant_id, user_id="ann")
    original = await _messages(api, thread_id)
    fork = await _fork(api, thread_id, 3)
    assert fork.thread_id != thread_id
    assert fork.assistant_id == assistant_id
    assert fork.user_id == "ann"
    assert fork.message_count == 4
    assert fork.forked_from.thread_id == thread_id
    assert fork.forked_from.through_sequence == 3
    assert (await _thread(api, fork.thread_id)).forked_from == fork.forked_from
    copies = await _messages(api, fork.thread_id)
    assert [(m.sequence, m.role, m.content) for m in copies] == [
        (m.sequence, m.role, m.content) for m in original[:4]
    ]
    assert not {m.message_id for m in copies} & {m.message_id for m in original}
    assert all(m.thread_id == fork.thread_id for m in copies)
    assert len(await _messages(api, thread_id)) == 6
    assert (await _thread(api, thread_id)).message_count == 6
    assert not (await _thread(api, thread_id)).HasField("forked_from")

    # Edit message 2: fork before it and send the new text.
    edit = await _fork(api, thread_id, 1)
    llm.reset()
    llm.script(Reply(text="Answer to the edit"))
    events = await api.send(content="Question 1, edited", thread_id=edit.thread_id)
    assert events[-1].completed.message.sequence == 3
    sent = [m["content"] for m in llm.requests[0].body["messages"] if m["role"] != "system"]
    assert sent == ["Question 0", "Answer to: Question 0", "Question 1, edited"]


async def test_regenerate_a_reply_by_forking_before_it_and_sending_nothing(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _conversation(api, llm, 2)
    fork = await _fork(api, thread_id, 2)  # ends with "Question 1", the user's
    llm.reset()
    llm.script(Reply(text="A second take"))
    events = await api.send(content="", thread_id=fork.thread_id)
    started = events[0].started
    copies = await _messages(api, fork.thread_id)
    assert started.user_message_id == copies[2].message_id
    assert not started.thread_created
    assert events[-1].completed.message.content == "A second take"
    assert events[-1].completed.message.sequence == 3
    sent = [m["content"] for m in llm.requests[0].body["messages"] if m["role"] != "system"]
    assert sent == ["Question 0", "Answer to: Question 0", "Question 1"]
    assert [m.content for m in copies] == [
        "Question 0",
        "Answer to: Question 0",
        "Question 1",
        "A second take",
    ]
    # Only when the last message is the user's.
    for request in (
        thread_pb2.SendMessageRequest(content="", thread_id=fork.thread_id),
        thread_pb2.SendMessageRequest(content=""),
    ):
        error = await expect_error(
            api.threads.SendMessage(request, metadata=api.metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert "content" in error.details()
    assert len(await _messages(api, fork.thread_id)) == 4


async def test_forks_of_forks_and_empty_forks(api: Api, llm: ScriptedLLM) -> None:
    thread_id = await _conversation(api, llm, 3)
    child = await _fork(api, thread_id, 4)
    await api.send(content="Child question", thread_id=child.thread_id)
    grandchild = await _fork(api, child.thread_id, 5)
    assert grandchild.forked_from.thread_id == child.thread_id
    assert [m.content for m in await _messages(api, grandchild.thread_id)][-2:] == [
        "Question 2",
        "Child question",
    ]
    empty = await _fork(api, thread_id, -1)
    assert empty.message_count == 0
    assert await _messages(api, empty.thread_id) == []
    for through in (-2, 6, 100):
        error = await expect_error(_fork(api, thread_id, through), grpc.StatusCode.INVALID_ARGUMENT)
        assert "through_sequence" in error.details()
    await expect_error(
        _fork(api, "thread_" + "0" * 24, 0), grpc.StatusCode.NOT_FOUND, "THREAD_NOT_FOUND"
    )


async def test_a_summary_is_carried_only_if_it_covers_nothing_past_the_fork(
    api: Api, llm: ScriptedLLM
) -> None:
    def route(body: dict[str, Any]) -> Reply:
        if body["messages"][0]["content"].startswith(SUMMARY_MARK):
            return Reply(text="Summary of the early talk.")
        return Reply(text="ok")

    llm.set_default(route)
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="s", context_window=1024)
        ),
    )
    batch = [
        thread_pb2.Message(
            role=thread_pb2.ROLE_USER if i % 2 == 0 else thread_pb2.ROLE_ASSISTANT,
            content=f"Line {i} about topic {i} " * 3,
        )
        for i in range(200)
    ]
    added = await api.call(
        api.threads.AddMessages,
        thread_pb2.AddMessagesRequest(messages=batch, assistant_id=created.assistant.assistant_id),
    )
    thread_id = added.thread.thread_id
    for _ in range(200):
        if (await _thread(api, thread_id)).HasField("summary"):
            break
        await asyncio.sleep(0.05)
    summary = (await _thread(api, thread_id)).summary
    assert summary.through_sequence > 2
    late = await _fork(api, thread_id, 199)
    assert late.summary == summary
    early = await _fork(api, thread_id, 2)
    assert not early.HasField("summary")
    assert early.message_count == 3


async def test_forking_a_busy_thread_copies_only_settled_messages(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _conversation(api, llm, 1)
    llm.script(Reply(text="a slow reply in many parts", chunk_delay=0.3))
    slow = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="slow one", thread_id=thread_id),
        metadata=api.metadata,
    )
    assert (await slow.read()).HasField("started")
    # Through the running turn's question: allowed, it is whole.
    fork = await _fork(api, thread_id, 2)
    assert [m.content for m in await _messages(api, fork.thread_id)][-1] == "slow one"
    # Through the reply still streaming: refused, and nothing is left behind.
    before = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    await expect_error(_fork(api, thread_id, 3), grpc.StatusCode.ABORTED, "THREAD_BUSY")
    after = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert len(after.threads) == len(before.threads)
    while await slow.read() is not aio.EOF:
        pass
    whole = await _fork(api, thread_id, 3)
    assert [m.content for m in await _messages(api, whole.thread_id)][-1] == (
        "a slow reply in many parts"
    )


async def test_a_run_waiting_for_tools_is_not_carried_into_a_fork(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(Model())
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="w", tools=[_tool(WEATHER)])
        ),
    )
    events = await api.send(
        content="weather in Paris?", assistant_id=created.assistant.assistant_id
    )
    thread_id = events[0].started.thread_id
    run_id = events[-1].tool_calls_required.run_id
    fork = await _fork(api, thread_id, 1)
    assert fork.pending_run_id == ""
    copied = (await _messages(api, fork.thread_id))[-1]
    assert copied.status == thread_pb2.MESSAGE_STATUS_CANCELLED
    assert copied.tool_calls[0].name == "get_weather"
    assert (await _thread(api, thread_id)).pending_run_id == run_id
    after = await api.send(content="never mind, hello", thread_id=fork.thread_id)
    assert after[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE


async def test_messages_of_a_fork_that_never_finished_are_purged(api: Api, loom: Loom) -> None:
    tenant = (await loom.keys.authenticate(api.key)).tenant
    orphan = ids.new_id(ids.THREAD)
    await loom.store.db["messages"].insert_one(
        {
            "_id": key(tenant, ids.new_id(ids.MESSAGE)),
            "tenant": tenant,
            "thread_id": orphan,
            "role": "user",
            "content": "copied before the crash",
            "status": "complete",
            "sequence": 0,
            "create_time": datetime.now(UTC),
        }
    )
    await loom.threads.schedule_purge(tenant, orphan, datetime.now(UTC))
    messages = loom.store.db["messages"]
    left = -1

    async def count() -> int:
        return await messages.count_documents({"thread_id": orphan})

    for _ in range(100):
        left = await count()
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == 0
