"""The Python client (clients/python, ``loom_client``) against the real
service: every public call, through ``Loom`` and ``AsyncLoom`` alike."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from loom_client import AsyncLoom, Loom, MemoryMode, OnBusy
from loom_client.errors import (
    ApiKeyInvalid,
    ApiKeyMissing,
    AssistantNotFound,
    DeadlineExceeded,
    InvalidArgument,
    MemoryNotFound,
    ReplyInterrupted,
    RequestIdReused,
    ThreadBusy,
    ThreadNotFound,
    Unavailable,
)
from loom_client.tools import function_tool
from loom_client.types import (
    ContextStrategy,
    MemoriesRecalled,
    MemoryKind,
    MessageStatus,
    OperationState,
    Reply,
    Role,
    Started,
    TextDelta,
)
from service.server import Loom as LoomServer
from tests.conftest import new_tenant_key
from tests.scripted_llm import Hang, ScriptedLLM
from tests.scripted_llm import Reply as Scripted
from tests.support.clients import Uniform

EXTRACT_MARK = "From the exchange below"
RECONCILE_MARK = "For each new fact"


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Current weather in a city.

    The second paragraph is not part of the description."""
    return {"city": city, "forecast": "sunny", unit: 21}


def route(body: dict[str, Any]) -> Scripted:
    """The scripted model: facts about peanuts, a weather tool call when the
    tools allow it, an echo otherwise."""
    messages = body["messages"]
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    last = messages[-1]
    if EXTRACT_MARK in system:
        facts = ["The user is allergic to peanuts."] if "peanuts" in last["content"] else []
        return Scripted(text=json.dumps({"facts": facts}))
    if RECONCILE_MARK in system:
        return Scripted(text='{"operations": []}')
    if last["role"] == "tool":
        return Scripted(text=f"Tool said: {last['content']}")
    if body.get("tools") and "weather" in last["content"]:
        name = "get_time" if "time" in last["content"] else "get_weather"
        return Scripted(
            text="Checking. ",
            tool_calls=[{"id": "call_1", "name": name, "arguments": '{"city": "Paris"}'}],
        )
    return Scripted(text=f"You said: {last['content']}")


@pytest.fixture
def routed(llm: ScriptedLLM) -> ScriptedLLM:
    llm.set_default(route)
    return llm


def address(loom: LoomServer) -> str:
    return f"127.0.0.1:{loom.port}"


@pytest.fixture(params=["sync", "async"])
async def client(request: pytest.FixtureRequest, loom: LoomServer) -> AsyncIterator[Uniform]:
    """A client of a brand-new tenant: ``Loom`` (in a worker thread) or ``AsyncLoom``."""
    key = await new_tenant_key(loom)
    if request.param == "sync":
        sync = Loom(address(loom), api_key=key)
        yield Uniform(sync, threaded=True)
        sync.close()
    else:
        async with AsyncLoom(address(loom), api_key=key) as async_client:
            yield Uniform(async_client, threaded=False)


async def test_send_message_creates_a_thread_then_continues_it(
    client: Uniform, routed: ScriptedLLM
) -> None:
    first = await client.send_message("My favorite color is blue.")
    assert isinstance(first, Reply)
    assert first.thread_created
    assert first.thread_id.startswith("thread_")
    assert first.content == "You said: My favorite color is blue."
    assert first.status is MessageStatus.COMPLETE
    assert first.usage.output_tokens > 0
    assert first.message_id.startswith("msg_")
    assert first.user_message_id.startswith("msg_")

    second = await client.send_message("What did I say?", thread_id=first.thread_id)
    assert second.thread_id == first.thread_id
    assert not second.thread_created
    prompt = [m["content"] for m in routed.requests[-1].body["messages"]]
    assert "My favorite color is blue." in prompt
    assert "You said: My favorite color is blue." in prompt


async def test_stream_message_yields_events_and_ends_with_the_reply(
    client: Uniform, routed: ScriptedLLM
) -> None:
    events = await client.stream_message("one two three four")
    assert isinstance(events[0], Started)
    assert isinstance(events[-1], Reply)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1
    reply = events[-1]
    assert "".join(deltas) == reply.content == "You said: one two three four"
    assert events[0].message_id == reply.message_id
    assert events[0].thread_id == reply.thread_id


async def test_memory_mode_is_a_string_or_an_enum(client: Uniform, routed: ScriptedLLM) -> None:
    assistant = await client.assistants.create(name="Modes", memory_mode="auto")
    assert assistant.memory_mode is MemoryMode.AUTO
    sent = [
        ("off", MemoryMode.OFF),
        (MemoryMode.READONLY, MemoryMode.READONLY),
        ("AUTO", MemoryMode.AUTO),
    ]
    thread_id = ""
    for given, stored in sent:
        options: dict[str, Any] = {"memory": given, "assistant_id": assistant.assistant_id}
        if thread_id:
            options = {"memory": given, "thread_id": thread_id}
        reply = await client.send_message(f"memory {given}", **options)
        thread_id = reply.thread_id
        messages = await client.threads.messages(thread_id, order="desc", page_size=2)
        assert messages[1].role is Role.USER
        assert messages[1].memory is stored
    with pytest.raises(ValueError, match="memory must be one of auto, readonly, off"):
        await client.send_message("hi", memory="sometimes")


async def test_assistants_create_get_list_update_delete(client: Uniform) -> None:
    created = await client.assistants.create(
        name="Weather",
        instructions="Be brief.",
        model="scripted-model",
        metadata={"team": "a"},
        context_window=4096,
        context_strategy="truncate",
        tools=[get_weather],
        memory_from_tool_outputs=True,
    )
    assert created.assistant_id.startswith("asst_")
    assert created.context_strategy is ContextStrategy.TRUNCATE
    function = created.tools[0]["function"]
    assert function["name"] == "get_weather"
    assert function["description"] == "Current weather in a city."
    assert function["parameters"]["required"] == ["city"]
    assert function["parameters"]["properties"]["unit"] == {"type": "string"}

    assert await client.assistants.get(created.assistant_id) == created
    others = [await client.assistants.create(name=f"n{i}") for i in range(2)]
    listed = await client.assistants.list(page_size=1)  # three pages
    assert [a.assistant_id for a in listed] == [
        a.assistant_id for a in [*reversed(others), created]
    ]

    updated = await client.assistants.update(created.assistant_id, name="Renamed", tools=[])
    assert updated.name == "Renamed"
    assert updated.instructions == "Be brief."  # not in the mask: unchanged
    assert updated.tools == []

    thread = await client.threads.create(assistant_id=created.assistant_id)
    assert await client.assistants.delete(created.assistant_id) == 1
    with pytest.raises(AssistantNotFound) as caught:
        await client.assistants.get(created.assistant_id)
    assert caught.value.metadata == {"assistant_id": created.assistant_id}
    assert caught.value.reason == "ASSISTANT_NOT_FOUND"
    with pytest.raises(ThreadNotFound):
        await client.threads.get(thread.thread_id)


PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
    "required": ["name", "born"],
}


async def test_generation_settings_on_the_assistant_and_the_message(
    client: Uniform, llm: ScriptedLLM
) -> None:
    assistant = await client.assistants.create(
        name="Extractor", generation={"temperature": 0, "reasoning_effort": "low", "seed": 3}
    )
    assert assistant.generation == {"temperature": 0, "reasoning_effort": "low", "seed": 3}
    llm.script(Scripted(text='{"name": "Ada"}'))
    schema = {"json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    reply = await client.send_message(
        "Extract Ada.",
        assistant_id=assistant.assistant_id,
        generation={"max_output_tokens": 80, "stop": ["END"], "response_format": schema},
    )
    body = llm.requests[-1].body
    assert {k: body[k] for k in ("temperature", "seed", "max_completion_tokens", "stop")} == {
        "temperature": 0,
        "seed": 3,
        "max_completion_tokens": 80,
        "stop": ["END"],
    }
    assert body["reasoning_effort"] == "low"
    assert body["response_format"]["json_schema"]["name"] == "person"
    assert "'born' is a required property" in reply.schema_error
    messages = await client.threads.messages(reply.thread_id, order="desc", page_size=1)
    assert messages[0].message_id == reply.message_id
    assert messages[0].schema_error == reply.schema_error

    llm.script(Scripted(text="{}"))
    plain = await client.send_message(
        "JSON, please.", thread_id=reply.thread_id, generation={"response_format": "json_object"}
    )
    assert llm.requests[-1].body["response_format"] == {"type": "json_object"}
    assert plain.schema_error == ""
    with pytest.raises(InvalidArgument) as caught:
        await client.send_message("hot", generation={"temperature": 3})
    assert "generation.temperature" in str(caught.value)
    with pytest.raises(ValueError, match="generation"):
        await client.send_message("?", generation={"temprature": 1})  # type: ignore[typeddict-unknown-key]


async def test_threads_create_get_list_delete_and_every_message(
    client: Uniform, routed: ScriptedLLM
) -> None:
    thread = await client.threads.create(user_id="alice", metadata={"ticket": "7"})
    assert (thread.user_id, thread.metadata, thread.message_count) == ("alice", {"ticket": "7"}, 0)
    for i in range(3):
        await client.send_message(f"message {i}", thread_id=thread.thread_id)
    other = await client.send_message("another user", user_id="bob")

    assert (await client.threads.get(thread.thread_id)).message_count == 6
    messages = await client.threads.messages(thread.thread_id, page_size=2)  # three pages
    assert [m.sequence for m in messages] == list(range(6))
    assert [m.content for m in messages[:2]] == ["message 0", "You said: message 0"]
    assert [m.role for m in messages[:2]] == [Role.USER, Role.ASSISTANT]
    newest = await client.threads.messages(thread.thread_id, order="desc", page_size=4)
    assert [m.sequence for m in newest] == list(reversed(range(6)))

    alice = await client.threads.list(user_id="alice")
    assert [t.thread_id for t in alice] == [thread.thread_id]
    everyone = await client.threads.list(assistant_id=thread.assistant_id, page_size=1)
    assert [t.thread_id for t in everyone] == [other.thread_id, thread.thread_id]

    assert await client.threads.delete(thread.thread_id) == 6
    with pytest.raises(ThreadNotFound) as caught:
        await client.threads.messages(thread.thread_id)
    assert caught.value.metadata == {"thread_id": thread.thread_id}


async def test_message_pages_are_fetched_as_the_caller_reads(
    loom: LoomServer, routed: ScriptedLLM
) -> None:
    with Loom(address(loom), api_key=await new_tenant_key(loom)) as client:
        reply = await asyncio.to_thread(client.send_message, "one")
        await asyncio.to_thread(client.send_message, "two", thread_id=reply.thread_id)
        pages = client.threads.messages(reply.thread_id, page_size=2)
        first = await asyncio.to_thread(lambda: [next(pages), next(pages)])
        assert [m.content for m in first] == ["one", "You said: one"]
        # The second page is asked for only now, after the thread is gone.
        await asyncio.to_thread(client.threads.delete, reply.thread_id)
        with pytest.raises(ThreadNotFound):
            await asyncio.to_thread(next, pages)


async def test_memories_create_get_list_search_update_delete_and_wait(
    client: Uniform, routed: ScriptedLLM
) -> None:
    chef = await client.assistants.create(name="Chef", memory_mode=MemoryMode.AUTO)
    aid = chef.assistant_id
    manual = await client.memories.create(aid, "The kitchen closes at ten.", metadata={"src": "t"})
    assert manual.kind is MemoryKind.MANUAL
    assert manual.user_id == ""
    assert await client.memories.get(aid, manual.memory_id) == manual

    said = await client.send_message("I'm allergic to peanuts.", assistant_id=aid, user_id="u1")
    assert said.memory_operation_id
    done = await client.memories.wait(said.memory_operation_id, timeout=30)
    assert done.state is OperationState.SUCCEEDED
    assert done.done
    assert done.added_memory_ids
    assert (await client.memories.operation(said.memory_operation_id)) == done

    mine = await client.memories.list(aid, user_id="u1", page_size=1)
    assert "The user is allergic to peanuts." in [m.content for m in mine]
    wide = await client.memories.list(aid, assistant_wide_only=True)
    assert [m.memory_id for m in wide] == [manual.memory_id]
    found = await client.memories.search(aid, "peanut allergy", user_id="u1", limit=3)
    assert "The user is allergic to peanuts." in [r.memory.content for r in found]
    assert found[0].score > 0
    assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)

    events = await client.stream_message("Any allergies?", assistant_id=aid, user_id="u1")
    recalled = [e for e in events if isinstance(e, MemoriesRecalled)]
    assert recalled
    assert "The user is allergic to peanuts." in [m.content for m in recalled[0].memories]
    assert events[-1].memories == recalled[0].memories

    changed = await client.memories.update(aid, manual.memory_id, content="Closes at eleven.")
    assert (changed.content, changed.metadata) == ("Closes at eleven.", {"src": "t"})
    await client.memories.delete(aid, manual.memory_id)
    with pytest.raises(MemoryNotFound):
        await client.memories.get(aid, manual.memory_id)


async def test_tool_calls_submit_outputs_and_cancel(client: Uniform, routed: ScriptedLLM) -> None:
    assistant = await client.assistants.create(name="Weather", tools=[get_weather])
    waiting = await client.send_message("weather in Paris?", assistant_id=assistant.assistant_id)
    assert waiting.requires_action
    assert waiting.content == "Checking. "
    assert waiting.run_id
    assert waiting.expire_time is not None
    [call] = waiting.tool_calls
    assert (call.name, call.parsed_arguments()) == ("get_weather", {"city": "Paris"})

    done = await client.submit_tool_outputs(
        waiting.thread_id, waiting.run_id, {call.tool_call_id: get_weather("Paris")}
    )
    assert done.status is MessageStatus.COMPLETE
    assert done.content == 'Tool said: {"city": "Paris", "forecast": "sunny", "celsius": 21}'

    again = await client.send_message("weather again?", thread_id=waiting.thread_id)
    assert again.requires_action
    with pytest.raises(ThreadBusy):
        await client.send_message("hello?", thread_id=again.thread_id)
    cancelled = await client.cancel_run(again.thread_id, again.run_id)
    assert cancelled.status is MessageStatus.CANCELLED
    after = await client.send_message("hello?", thread_id=again.thread_id)
    assert after.content == "You said: hello?"


async def test_stream_tool_outputs_streams_the_continued_reply(
    client: Uniform, routed: ScriptedLLM
) -> None:
    assistant = await client.assistants.create(name="Weather", tools=[get_weather])
    waiting = await client.send_message("weather?", assistant_id=assistant.assistant_id)
    events = await client.stream_tool_outputs(
        waiting.thread_id, waiting.run_id, {waiting.tool_calls[0].tool_call_id: "rain"}
    )
    assert isinstance(events[0], Started)
    assert events[0].message_id != waiting.message_id
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Tool said: rain"
    assert events[-1].content == "Tool said: rain"


async def test_run_tools_answers_tool_calls_with_python_functions(
    client: Uniform, routed: ScriptedLLM
) -> None:
    calls: list[str] = []

    def weather(city: str) -> dict[str, str]:
        calls.append(city)
        return {"city": city, "forecast": "snow"}

    assistant = await client.assistants.create(name="Weather", tools=[function_tool(weather)])
    reply = await client.run_tools(
        "weather in Paris?", {"get_weather": weather}, assistant_id=assistant.assistant_id
    )
    assert calls == ["Paris"]
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == 'Tool said: {"city": "Paris", "forecast": "snow"}'
    messages = await client.threads.messages(reply.thread_id)
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]


async def test_run_tools_tells_the_model_of_an_unknown_function(
    client: Uniform, routed: ScriptedLLM
) -> None:
    reply = await client.run_tools(
        "weather and time?",
        [get_weather],
        tools=[get_weather],  # the model asks for get_time
    )
    assert reply.status is MessageStatus.COMPLETE
    assert "no function named 'get_time'" in reply.content
    assert "get_weather" in reply.content


async def test_run_tools_cancels_the_run_when_a_function_raises(
    client: Uniform, routed: ScriptedLLM
) -> None:
    def get_weather(city: str) -> str:
        raise RuntimeError(f"no forecast for {city}")

    with pytest.raises(RuntimeError, match="no forecast for Paris"):
        await client.run_tools("weather?", [get_weather], tools=[get_weather])
    [thread] = await client.threads.list()
    assert thread.pending_run_id == ""  # cancelled: the thread takes the next message
    reply = await client.send_message("still there?", thread_id=thread.thread_id)
    assert reply.content == "You said: still there?"


async def test_async_run_tools_awaits_coroutine_functions(
    loom: LoomServer, routed: ScriptedLLM
) -> None:
    async def get_weather(city: str) -> str:
        await asyncio.sleep(0)
        return f"fog in {city}"

    async with AsyncLoom(address(loom), api_key=await new_tenant_key(loom)) as client:
        reply = await client.run_tools("weather?", [get_weather], tools=[get_weather])
    assert reply.content == "Tool said: fog in Paris"


async def test_errors_are_named_after_their_reasons(
    client: Uniform, loom: LoomServer, routed: ScriptedLLM
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await client.send_message("")
    assert caught.value.metadata == {"field": "content"}
    assert "content" in caught.value.message

    await client.send_message("first", request_id="req-1")
    with pytest.raises(RequestIdReused) as reused:
        await client.send_message("second", request_id="req-1")
    assert reused.value.reason == "REQUEST_ID_REUSED"

    with pytest.raises(ApiKeyInvalid):
        await Uniform(Loom(address(loom), api_key="nope"), threaded=True).threads.create()
    async with AsyncLoom(address(loom), api_key="") as keyless:
        with pytest.raises(ApiKeyMissing) as missing:
            await keyless.threads.create()
    assert missing.value.domain == "loom.v1"
    assert str(missing.value).endswith("(UNAUTHENTICATED API_KEY_MISSING)")


async def test_a_second_message_on_a_busy_thread_raises_thread_busy(
    client: Uniform, routed: ScriptedLLM
) -> None:
    thread = await client.threads.create()
    routed.script(Scripted(text="slow reply " * 5, chunk_delay=0.1))
    first = asyncio.create_task(client.send_message("one", thread_id=thread.thread_id))
    assert await asyncio.to_thread(routed.wait_for, lambda s: len(s.requests) >= 1)
    with pytest.raises(ThreadBusy) as caught:
        await client.send_message("two", thread_id=thread.thread_id)
    assert caught.value.metadata == {"thread_id": thread.thread_id}
    assert (await first).status is MessageStatus.COMPLETE


async def test_on_busy_enqueues_or_interrupts_as_a_string_or_an_enum(
    client: Uniform, routed: ScriptedLLM
) -> None:
    thread = await client.threads.create()
    tid = thread.thread_id
    routed.script(Scripted(text="slow reply " * 5, chunk_delay=0.1))
    first = asyncio.create_task(client.send_message("one", thread_id=tid))
    assert await asyncio.to_thread(routed.wait_for, lambda s: len(s.requests) >= 1)
    queued = await client.send_message("two", thread_id=tid, on_busy="enqueue")
    assert (await first).status is MessageStatus.COMPLETE
    assert queued.status is MessageStatus.COMPLETE
    routed.script(Scripted(text="slow reply " * 40, chunk_delay=0.1))
    slow = asyncio.create_task(client.send_message("three", thread_id=tid))
    assert await asyncio.to_thread(routed.wait_for, lambda s: len(s.requests) >= 3)
    newer = await client.send_message("four", thread_id=tid, on_busy=OnBusy.INTERRUPT)
    with pytest.raises(ReplyInterrupted):
        await slow
    assert newer.status is MessageStatus.COMPLETE
    messages = await client.threads.messages(tid, page_size=10)
    assert [m.content for m in messages if m.role is Role.USER] == ["one", "two", "three", "four"]
    assert messages[5].status is MessageStatus.INCOMPLETE
    with pytest.raises(ValueError, match="on_busy must be one of reject, enqueue, interrupt"):
        await client.send_message("hi", thread_id=tid, on_busy="wait")


async def test_with_options_sets_a_deadline_on_the_same_channel(
    loom: LoomServer, llm: ScriptedLLM
) -> None:
    llm.script(Hang())
    async with AsyncLoom(address(loom), api_key=await new_tenant_key(loom)) as client:
        hasty = client.with_options(timeout=0.5, max_retries=0)
        assert hasty.address == client.address
        with pytest.raises(DeadlineExceeded):
            await hasty.send_message("Hello?")
        reply = await client.send_message("Hello again?")  # the original keeps its timeout
    assert reply.content == "Echo: Hello again?"


async def test_tls_against_a_plaintext_server_is_unavailable(loom: LoomServer) -> None:
    with Loom(address(loom), api_key="k", tls=True, max_retries=0) as client:
        assert client.address == address(loom)
        with pytest.raises(Unavailable):
            await asyncio.to_thread(client.threads.get, "thread_000000000000000000000000")
