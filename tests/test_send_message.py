"""SendMessage end to end: a real grpc.aio server, FerretDB and the scripted
model over HTTP."""

from __future__ import annotations

import asyncio

import grpc

from generated.loom.v1 import thread_pb2
from tests.conftest import Api, expect_error
from tests.scripted_llm import Reply, ScriptedLLM


def _text(events: list[thread_pb2.SendMessageResponse]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


async def test_seed_scenario_second_request_carries_first_exchange(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.script(Reply(text="Noted: blue."), Reply(text="You said your favorite color is blue."))
    first = await api.send(content="My favorite color is blue.")
    started = first[0].started
    assert started.thread_created
    assert started.thread_id.startswith("thread_")
    assert [e.WhichOneof("event") for e in first][-1] == "completed"
    assert _text(first) == "Noted: blue."

    second = await api.send(content="What did I just tell you?", thread_id=started.thread_id)
    assert not second[0].started.thread_created
    assert second[0].started.thread_id == started.thread_id
    assert _text(second) == "You said your favorite color is blue."

    sent = [(m["role"], m["content"]) for m in llm.requests[1].body["messages"]]
    assert sent[-3:] == [
        ("user", "My favorite color is blue."),
        ("assistant", "Noted: blue."),
        ("user", "What did I just tell you?"),
    ]
    assert sent[0][0] == "system"

    done = second[-1].completed.message
    assert done.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert done.role == thread_pb2.ROLE_ASSISTANT
    assert done.sequence == 3
    assert done.usage.output_tokens > 0
    assert done.model == "scripted-model"

    listed = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=started.thread_id)
    )
    assert [m.sequence for m in listed.messages] == [0, 1, 2, 3]
    assert [m.content for m in listed.messages] == [
        "My favorite color is blue.",
        "Noted: blue.",
        "What did I just tell you?",
        "You said your favorite color is blue.",
    ]


async def test_one_assistant_a_thread_per_user_never_mixes(api: Api, llm: ScriptedLLM) -> None:
    from generated.loom.v1 import assistant_pb2

    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="Support", instructions="Be brief.")
        ),
    )
    assistant_id = created.assistant.assistant_id
    alice = await api.send(content="I am Alice.", assistant_id=assistant_id, user_id="alice")
    bob = await api.send(content="I am Bob.", assistant_id=assistant_id, user_id="bob")
    alice_thread = alice[0].started.thread_id
    bob_thread = bob[0].started.thread_id
    assert alice_thread != bob_thread

    llm.reset()
    await api.send(content="Who am I?", thread_id=alice_thread)
    contents = [m["content"] for m in llm.requests[0].body["messages"]]
    assert contents[0] == "Be brief."
    assert "I am Alice." in contents
    assert not any("Bob" in c for c in contents)

    page = await api.call(
        api.threads.ListThreads,
        thread_pb2.ListThreadsRequest(assistant_id=assistant_id, user_id="bob"),
    )
    assert [t.thread_id for t in page.threads] == [bob_thread]
    assert page.threads[0].user_id == "bob"


async def test_busy_thread_refuses_a_second_reply(api: Api, llm: ScriptedLLM) -> None:
    first = await api.send(content="hello")
    thread_id = first[0].started.thread_id
    llm.script(Reply(text="a slow reply in many parts", chunk_delay=0.1))
    slow = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="slow one", thread_id=thread_id),
        metadata=api.metadata,
    )
    first_event = await slow.read()
    assert first_event.HasField("started")
    error = await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="too soon", thread_id=thread_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    assert "busy" in error.details()
    rest = []
    while (event := await slow.read()) is not grpc.aio.EOF:
        rest.append(event)
    assert rest[-1].completed.message.content == "a slow reply in many parts"
    after = await api.send(content="now it is free", thread_id=thread_id)
    assert after[-1].completed.message.sequence == 5
    listed = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)
    )
    assert [m.sequence for m in listed.messages] == list(range(6))


async def test_concurrent_sends_on_one_thread_keep_sequences_whole(
    api: Api, llm: ScriptedLLM
) -> None:
    first = await api.send(content="start")
    thread_id = first[0].started.thread_id
    llm.set_default(Reply(chunk_delay=0.01))

    async def attempt(i: int) -> str:
        try:
            await api.send(content=f"message {i}", thread_id=thread_id)
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "ok"

    outcomes = await asyncio.gather(*(attempt(i) for i in range(8)))
    assert "ok" in outcomes
    assert set(outcomes) <= {"ok", "ABORTED"}
    listed = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=100),
    )
    sequences = [m.sequence for m in listed.messages]
    assert sequences == list(range(len(sequences)))
    assert len(sequences) == 2 + 2 * outcomes.count("ok")
    thread = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    assert thread.thread.message_count == len(sequences)
