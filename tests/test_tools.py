"""Function tools: the requires-action loop, streamed and durable."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc import aio

from generated.loom.v1 import assistant_pb2, thread_pb2, tools_pb2
from service.server import Loom
from service.store.scoped import key
from tests.conftest import Api, expect_error, make_settings, new_tenant_key, start_loom
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.process import grpcurl_bin, json_objects

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def _tool(definition: dict[str, Any]) -> tools_pb2.Tool:
    return json_format.ParseDict(definition, tools_pb2.Tool())


class Model:
    """Asks for tools while the conversation needs them, then answers."""

    def __init__(self, rounds: list[list[dict[str, str]]] | None = None) -> None:
        self.rounds = (
            rounds
            if rounds is not None
            else [[{"id": "call_w1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]]
        )
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> Reply:
        self.bodies.append(body)
        answered = sum(1 for m in body["messages"] if m["role"] == "tool")
        called = sum(len(m.get("tool_calls") or []) for m in body["messages"])
        last = body["messages"][-1]
        if last["role"] == "user" and "weather" not in last["content"]:
            return Reply(text="Just chatting.")
        round_index = sum(
            1 for m in body["messages"] if m["role"] == "assistant" and m.get("tool_calls")
        )
        if answered == called and round_index < len(self.rounds) and body.get("tools"):
            # Only the current turn's rounds count: earlier turns were answered.
            current = _current_turn_rounds(body["messages"])
            if current < len(self.rounds):
                return Reply(text="Let me check. ", tool_calls=self.rounds[current])
        outputs = [m["content"] for m in body["messages"] if m["role"] == "tool"]
        return Reply(text=f"It is {outputs[-1] if outputs else 'unknown'}.")


def _current_turn_rounds(messages: list[dict[str, Any]]) -> int:
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return sum(1 for m in messages[last_user:] if m["role"] == "assistant" and m.get("tool_calls"))


async def _assistant(api: Api, *tools: dict[str, Any]) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Weather", instructions="Use tools.", tools=[_tool(t) for t in tools]
            )
        ),
    )
    return str(created.assistant.assistant_id)


async def _submit(
    api: Api, thread_id: str, run_id: str, outputs: dict[str, str]
) -> list[thread_pb2.SubmitToolOutputsResponse]:
    call = api.threads.SubmitToolOutputs(
        thread_pb2.SubmitToolOutputsRequest(
            thread_id=thread_id,
            run_id=run_id,
            tool_outputs=[
                tools_pb2.ToolOutput(tool_call_id=k, output=v) for k, v in outputs.items()
            ],
        ),
        metadata=api.metadata,
    )
    return [event async for event in call]


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    page = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)
    )
    return list(page.messages)


async def _thread(api: Api, thread_id: str) -> thread_pb2.Thread:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread


async def test_one_tool_call_round_trip(api: Api, llm: ScriptedLLM) -> None:
    model = Model()
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER)
    events = await api.send(content="What's the weather in Paris?", assistant_id=assistant_id)
    assert [e.WhichOneof("event") for e in events][-1] == "tool_calls_required"
    required = events[-1].tool_calls_required
    assert required.run_id.startswith("run_")
    assert [(c.tool_call_id, c.name, json.loads(c.arguments)) for c in required.tool_calls] == [
        ("call_w1", "get_weather", {"city": "Paris"})
    ]
    assert required.message_id == events[0].started.assistant_message_id
    assert required.expire_time.seconds > 0
    thread_id = events[0].started.thread_id
    assert model.bodies[0]["tools"] == [WEATHER]
    waiting = (await _messages(api, thread_id))[-1]
    assert waiting.status == thread_pb2.MESSAGE_STATUS_REQUIRES_ACTION
    assert waiting.content == "Let me check. "
    assert (await _thread(api, thread_id)).pending_run_id == required.run_id

    # While the run waits, the thread is busy for other messages.
    error = await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hello?", thread_id=thread_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.ABORTED,
        "THREAD_BUSY",
    )
    assert required.run_id in error.details()

    continued = await _submit(api, thread_id, required.run_id, {"call_w1": "sunny, 21 C"})
    kinds = [e.WhichOneof("event") for e in continued]
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert "delta" in kinds
    assert continued[0].started.thread_id == thread_id
    assert not continued[0].started.thread_created
    done = continued[-1].completed.message
    assert done.content == "It is sunny, 21 C."
    assert done.run_id == required.run_id
    # The model saw the call and its output in the OpenAI format.
    second = model.bodies[-1]["messages"]
    assert second[-2]["role"] == "assistant"
    assert second[-2]["tool_calls"][0]["id"] == "call_w1"
    assert second[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second[-1] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_w1"}

    messages = await _messages(api, thread_id)
    assert [(m.role, m.status) for m in messages] == [
        (thread_pb2.ROLE_USER, thread_pb2.MESSAGE_STATUS_COMPLETE),
        (thread_pb2.ROLE_ASSISTANT, thread_pb2.MESSAGE_STATUS_COMPLETE),
        (thread_pb2.ROLE_TOOL, thread_pb2.MESSAGE_STATUS_COMPLETE),
        (thread_pb2.ROLE_ASSISTANT, thread_pb2.MESSAGE_STATUS_COMPLETE),
    ]
    assert messages[1].tool_calls[0].tool_call_id == "call_w1"
    assert messages[2].tool_call_id == "call_w1"
    assert {m.run_id for m in messages} == {required.run_id}
    assert (await _thread(api, thread_id)).pending_run_id == ""

    # History replay: the next message's prompt carries the whole exchange.
    await api.send(content="Thanks, and tomorrow?", thread_id=thread_id)
    replay = model.bodies[-1]["messages"]
    roles = [m["role"] for m in replay]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert replay[2]["tool_calls"][0]["id"] == "call_w1"


async def test_parallel_calls_and_two_rounds(api: Api, llm: ScriptedLLM) -> None:
    model = Model(
        rounds=[
            [
                {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
                {"id": "call_b", "name": "get_time", "arguments": '{"city": "Oslo"}'},
            ],
            [{"id": "call_c", "name": "get_weather", "arguments": '{"city": "Bergen"}'}],
        ]
    )
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER, TIME)
    events = await api.send(content="weather and time in Oslo?", assistant_id=assistant_id)
    first = events[-1].tool_calls_required
    assert [c.tool_call_id for c in first.tool_calls] == ["call_a", "call_b"]
    thread_id = events[0].started.thread_id
    # Outputs may come in any order.
    second = await _submit(api, thread_id, first.run_id, {"call_b": "09:00", "call_a": "snow"})
    round_two = second[-1].tool_calls_required
    assert round_two.run_id == first.run_id
    assert [c.tool_call_id for c in round_two.tool_calls] == ["call_c"]
    final = await _submit(api, thread_id, first.run_id, {"call_c": "rain"})
    assert final[-1].completed.message.content == "It is rain."
    roles = [m.role for m in await _messages(api, thread_id)]
    tool, assistant = thread_pb2.ROLE_TOOL, thread_pb2.ROLE_ASSISTANT
    assert roles == [thread_pb2.ROLE_USER, assistant, tool, tool, assistant, tool, assistant]


async def test_bad_submissions_are_refused_and_change_nothing(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(
        Model(
            rounds=[
                [
                    {"id": "call_a", "name": "get_weather", "arguments": "{}"},
                    {"id": "call_b", "name": "get_weather", "arguments": "{}"},
                ]
            ]
        )
    )
    assistant_id = await _assistant(api, WEATHER)
    events = await api.send(content="weather twice", assistant_id=assistant_id)
    run_id = events[-1].tool_calls_required.run_id
    thread_id = events[0].started.thread_id
    before = await _messages(api, thread_id)
    bad = [
        {"call_a": "x"},  # missing call_b
        {"call_a": "x", "call_b": "y", "call_zzz": "z"},  # unknown id
    ]
    for outputs in bad:
        with pytest.raises(aio.AioRpcError) as caught:
            await _submit(api, thread_id, run_id, outputs)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tool_outputs" in caught.value.details()
    duplicate = api.threads.SubmitToolOutputs(
        thread_pb2.SubmitToolOutputsRequest(
            thread_id=thread_id,
            run_id=run_id,
            tool_outputs=[
                tools_pb2.ToolOutput(tool_call_id="call_a", output="1"),
                tools_pb2.ToolOutput(tool_call_id="call_a", output="2"),
                tools_pb2.ToolOutput(tool_call_id="call_b", output="3"),
            ],
        ),
        metadata=api.metadata,
    )
    await expect_error(duplicate, grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(
        api.threads.SubmitToolOutputs(
            thread_pb2.SubmitToolOutputsRequest(thread_id=thread_id, run_id="run_" + "0" * 24),
            metadata=api.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
        "RUN_NOT_FOUND",
    )
    assert await _messages(api, thread_id) == before
    assert (await _thread(api, thread_id)).pending_run_id == run_id
    ok = await _submit(api, thread_id, run_id, {"call_a": "sun", "call_b": "sun"})
    assert ok[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE


async def test_cancel_frees_the_thread_and_drops_the_dangling_calls(
    api: Api, llm: ScriptedLLM
) -> None:
    model = Model()
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER)
    events = await api.send(content="weather in Paris?", assistant_id=assistant_id)
    run_id = events[-1].tool_calls_required.run_id
    thread_id = events[0].started.thread_id
    cancelled = await api.call(
        api.threads.CancelRun, thread_pb2.CancelRunRequest(thread_id=thread_id, run_id=run_id)
    )
    assert cancelled.message.status == thread_pb2.MESSAGE_STATUS_CANCELLED
    await expect_error(
        api.call(
            api.threads.CancelRun, thread_pb2.CancelRunRequest(thread_id=thread_id, run_id=run_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    after = await api.send(content="never mind, hello", thread_id=thread_id)
    assert after[-1].completed.message.content == "Just chatting."
    prompt = model.bodies[-1]["messages"]
    assert not any(m.get("tool_calls") for m in prompt)
    assert "Let me check. " in [m["content"] for m in prompt]


async def test_tool_round_cap_and_run_expiry(ferretdb: FerretDB, llm: ScriptedLLM) -> None:
    llm.set_default(
        Model(
            rounds=[
                [{"id": f"call_{i}", "name": "get_weather", "arguments": "{}"}] for i in range(9)
            ]
        )
    )
    server = await start_loom(
        make_settings(
            ferretdb, llm, mongodb_db="loom_tool_limits", max_tool_rounds=2, run_expiry_seconds=0.5
        )
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            api = Api(ch, await new_tenant_key(server))
            assistant_id = await _assistant(api, WEATHER)
            events = await api.send(content="weather forever", assistant_id=assistant_id)
            run_id = events[-1].tool_calls_required.run_id
            thread_id = events[0].started.thread_id
            with pytest.raises(aio.AioRpcError) as caught:
                await _submit(api, thread_id, run_id, {"call_0": "sun"})
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "LOOM_MAX_TOOL_ROUNDS" in caught.value.details()
            assert (await _thread(api, thread_id)).pending_run_id == ""
            last = (await _messages(api, thread_id))[-1]
            assert last.status == thread_pb2.MESSAGE_STATUS_INCOMPLETE

            # Expiry: a run left waiting longer than allowed.
            events = await api.send(content="weather again", thread_id=thread_id)
            run_id = events[-1].tool_calls_required.run_id
            await asyncio.sleep(0.7)
            with pytest.raises(aio.AioRpcError) as caught:
                await _submit(api, thread_id, run_id, {"call_0": "sun"})
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            expired = [m for m in await _messages(api, thread_id) if m.run_id == run_id]
            assert expired[-1].status == thread_pb2.MESSAGE_STATUS_EXPIRED
            free = await api.send(content="hello", thread_id=thread_id)
            assert free[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    finally:
        await server.stop(0)


async def test_restart_between_tool_call_and_submission(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    llm.set_default(Model())
    settings = make_settings(ferretdb, llm, mongodb_db="loom_tool_restart")
    first = await start_loom(settings)
    key = await new_tenant_key(first)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{first.port}") as ch:
            api = Api(ch, key)
            assistant_id = await _assistant(api, WEATHER)
            events = await api.send(content="weather in Paris?", assistant_id=assistant_id)
    finally:
        await first.stop(0)
    run_id = events[-1].tool_calls_required.run_id
    thread_id = events[0].started.thread_id
    second = await start_loom(settings)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
            api = Api(ch, key)
            done = await _submit(api, thread_id, run_id, {"call_w1": "cloudy"})
            assert done[-1].completed.message.content == "It is cloudy."
    finally:
        await second.stop(0)


async def test_streaming_continues_after_submission_through_grpcurl(
    loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(Model())
    assistant_id = await _assistant(api, WEATHER)

    async def grpcurl(method: str, body: dict[str, Any]) -> list[Any]:
        proc = await asyncio.create_subprocess_exec(
            grpcurl_bin(),
            "-plaintext",
            "-H",
            f"x-api-key: {api.key}",
            "-d",
            json.dumps(body),
            f"127.0.0.1:{loom.port}",
            method,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return json_objects(out.decode())

    events = await grpcurl(
        "loom.v1.ThreadService/SendMessage",
        {"content": "weather in Paris?", "assistant_id": assistant_id},
    )
    required = events[-1]["tool_calls_required"]
    thread_id = events[0]["started"]["thread_id"]
    assert required["tool_calls"][0]["name"] == "get_weather"
    continued = await grpcurl(
        "loom.v1.ThreadService/SubmitToolOutputs",
        {
            "thread_id": thread_id,
            "run_id": required["run_id"],
            "tool_outputs": [
                {"tool_call_id": required["tool_calls"][0]["tool_call_id"], "output": "warm"}
            ],
        },
    )
    assert "started" in continued[0]
    assert any("delta" in e for e in continued)
    assert continued[-1]["completed"]["message"]["content"] == "It is warm."


async def test_message_can_override_tools_and_tool_choice(api: Api, llm: ScriptedLLM) -> None:
    model = Model(rounds=[[{"id": "call_t", "name": "get_time", "arguments": "{}"}]])
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER)
    events = await api.send(
        content="weather? (but use the clock)",
        assistant_id=assistant_id,
        tools=[_tool(TIME)],
        tool_choice="get_time",
    )
    body = model.bodies[-1]
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    run_id = events[-1].tool_calls_required.run_id
    await _submit(api, events[0].started.thread_id, run_id, {"call_t": "noon"})
    # The override holds for the whole run, not only its first round.
    assert [t["function"]["name"] for t in model.bodies[-1]["tools"]] == ["get_time"]
    await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(
                content="x", assistant_id=assistant_id, tool_choice="get_stock_price"
            ),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.parametrize(
    ("tool", "needle"),
    [
        ({"type": "function", "function": {"name": "bad name!"}}, "function.name"),
        (
            {
                "type": "function",
                "function": {"name": "f", "parameters": {"type": "object", "properties": 3}},
            },
            "not a valid JSON Schema",
        ),
        (
            {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}},
            "must describe an object",
        ),
        ({"type": "retrieval", "function": {"name": "f"}}, "not supported"),
    ],
)
async def test_bad_tool_definitions_are_invalid_argument(
    api: Api, tool: dict[str, Any], needle: str
) -> None:
    error = await expect_error(
        api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(name="x", tools=[_tool(tool)])
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert needle in error.details()
    page = await api.call(api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest())
    assert list(page.assistants) == []


async def test_duplicate_tool_names_and_schemas_with_refs_round_trip(api: Api) -> None:
    await expect_error(
        api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(tools=[_tool(WEATHER), _tool(WEATHER)])
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    with_ref = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "$defs": {"day": {"type": "string"}},
                "properties": {"when": {"$ref": "#/$defs/day"}},
            },
        },
    }
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(tools=[_tool(with_ref)])
        ),
    )
    got = await api.call(
        api.assistants.GetAssistant,
        assistant_pb2.GetAssistantRequest(assistant_id=created.assistant.assistant_id),
    )
    assert json_format.MessageToDict(got.assistant.tools[0]) == with_ref
    assert isinstance(got.assistant.tools[0].function.parameters, struct_pb2.Struct)


async def test_cancel_settles_the_reply_of_a_submission_that_died(
    api: Api, loom: Loom, llm: ScriptedLLM
) -> None:
    llm.set_default(Model())
    assistant_id = await _assistant(api, WEATHER)
    events = await api.send(content="weather in Paris?", assistant_id=assistant_id)
    thread_id = events[0].started.thread_id
    run_id = events[-1].tool_calls_required.run_id
    tenant = (await loom.keys.authenticate(api.key)).tenant
    # A SubmitToolOutputs died after storing the output and the next round's
    # reply, before it saved the thread (so the run still waits), and its
    # lease has expired.
    now = datetime.now(UTC)
    base = {"tenant": tenant, "thread_id": thread_id, "create_time": now, "run_id": run_id}
    await loom.store.db["messages"].insert_many(
        [
            {
                **base,
                "_id": key(tenant, "msg_" + "1" * 24),
                "role": "tool",
                "content": "sun",
                "status": "complete",
                "sequence": 2,
                "tool_call_id": "call_w1",
            },
            {
                **base,
                "_id": key(tenant, "msg_" + "2" * 24),
                "role": "assistant",
                "content": "It is su",
                "status": "in_progress",
                "sequence": 3,
                "model": "scripted-model",
            },
        ]
    )
    await loom.store.db["leases"].insert_one(
        {"_id": thread_id, "tenant": tenant, "owner": "dead", "expires": now - timedelta(seconds=1)}
    )
    cancelled = await api.call(
        api.threads.CancelRun, thread_pb2.CancelRunRequest(thread_id=thread_id, run_id=run_id)
    )
    assert cancelled.message.status == thread_pb2.MESSAGE_STATUS_CANCELLED
    messages = await _messages(api, thread_id)
    assert messages[3].status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
    assert messages[3].content == "It is su"
    assert (await _thread(api, thread_id)).message_count == 4
    after = await api.send(content="never mind, hello", thread_id=thread_id)
    assert after[-1].completed.message.sequence == 5


async def test_a_tool_choice_naming_no_tool_leaves_no_thread_behind(
    api: Api, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(api, WEATHER)
    error = await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(
                content="x", assistant_id=assistant_id, tool_choice="get_stock_price"
            ),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "tool_choice" in error.details()
    listed = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert list(listed.threads) == []
    assert not llm.requests
