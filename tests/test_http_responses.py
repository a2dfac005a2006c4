"""The Responses API of the HTTP door, driven by OpenAI's own Python SDK,
unchanged, with its base URL pointed at the in-process Loom: turns in a
conversation, the same streamed (every event in order, and the SDK's own
stream helper), a function-call round trip, ``previous_response_id``
chains, reading a response back with its input items, memory across two
conversations of one assistant and user, and the errors an SDK user meets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import httpx
import openai
import pytest

from generated.loom.v1 import assistant_pb2, common_pb2, thread_pb2
from service.server import Loom
from tests.conftest import Api, eventually, make_settings, start_loom
from tests.scripted_llm import Fail, Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.openai_http import WEATHER_TOOL, base_url, converse, openai_for

MODEL = "scripted-model"
EXTRACT_MARK = "From the exchange below"
RECONCILE_MARK = "For each new fact"


@pytest.fixture
async def client(loom: Loom, api: Api, llm: ScriptedLLM) -> Any:
    llm.set_default(converse)
    async with openai_for(loom, str(api.key)) as sdk:
        yield sdk


def _system(messages: list[dict[str, Any]]) -> str:
    return str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""


def _prompts(llm: ScriptedLLM) -> list[list[dict[str, Any]]]:
    """The turns of the chat prompts the model got (not memory extraction's),
    without the system message."""
    found = []
    for request in llm.requests:
        messages = (request.body or {}).get("messages") or []
        system = _system(messages)
        if EXTRACT_MARK not in system and RECONCILE_MARK not in system:
            found.append([m for m in messages if m["role"] != "system"])
    return found


async def test_two_turns_in_a_conversation_the_second_answers_from_the_first(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    conversation = await client.conversations.create()
    first = await client.responses.create(
        model=MODEL, input="My favorite color is blue.", conversation=conversation.id
    )
    assert first.status == "completed"
    assert first.output_text == "You said: My favorite color is blue."
    assert first.conversation is not None
    assert first.conversation.id == conversation.id
    second = await client.responses.create(
        model=MODEL, input="What did I just tell you?", conversation=conversation.id
    )
    # The model answered from the history Loom kept: the first turn was in its prompt.
    assert second.output_text == "You told me: My favorite color is blue."
    assert [m["content"] for m in _prompts(llm)[-1]] == [
        "My favorite color is blue.",
        "You said: My favorite color is blue.",
        "What did I just tell you?",
    ]
    assert second.id.startswith("resp_")
    assert second.id != first.id
    assert second.usage is not None
    assert second.usage.output_tokens > 0


async def test_the_same_streamed_every_event_in_order(client: openai.AsyncOpenAI) -> None:
    conversation = await client.conversations.create()
    await client.responses.create(
        model=MODEL, input="My favorite color is blue.", conversation=conversation.id
    )
    stream = await client.responses.create(
        model=MODEL, input="What did I just tell you?", conversation=conversation.id, stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1  # streamed, not sent whole
    assert kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas)
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(d.delta for d in deltas)
    assert text == "You told me: My favorite color is blue."
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == text
    assert completed.response.id == events[0].response.id
    item = events[2]
    assert item.type == "response.output_item.added"
    assert item.item.id == deltas[0].item_id


async def test_the_sdk_stream_helper_accumulates_the_response(client: openai.AsyncOpenAI) -> None:
    conversation = await client.conversations.create()
    async with client.responses.stream(
        model=MODEL, input="Hello there", conversation=conversation.id
    ) as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text == "You said: Hello there"
    fetched = await client.responses.retrieve(final.id)
    assert fetched.output_text == final.output_text
    assert fetched.status == "completed"


async def test_a_function_call_round_trip(client: openai.AsyncOpenAI, llm: ScriptedLLM) -> None:
    asked = await client.responses.create(
        model=MODEL, input="What's the weather in Paris?", tools=[WEATHER_TOOL]
    )
    # As OpenAI does: a completed response whose output is the call.
    assert asked.status == "completed"
    calls = [item for item in asked.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert calls[0].status == "completed"
    assert calls[0].call_id == "call_1"
    answered = await client.responses.create(
        model=MODEL,
        previous_response_id=asked.id,
        input=[
            {
                "type": "function_call_output",
                "call_id": calls[0].call_id,
                "output": json.dumps({"forecast": "sunny"}),
            }
        ],
    )
    assert answered.output_text == "It is sunny."
    assert answered.conversation is not None
    assert asked.conversation is not None
    assert answered.conversation.id == asked.conversation.id
    tool_turn = _prompts(llm)[-1][-1]
    assert tool_turn == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": '{"forecast": "sunny"}',
    }
    # The conversation holds the call and its output as items.
    items = await client.conversations.items.list(asked.conversation.id, order="asc")
    assert [i.type for i in items.data] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


async def test_function_call_outputs_continue_under_the_settings_of_their_response(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    asked = await client.responses.create(
        model=MODEL, input="What's the weather in Oslo?", tools=[WEATHER_TOOL], temperature=0.5
    )
    call = next(item for item in asked.output if item.type == "function_call")
    forecast = json.dumps({"forecast": "grey"})
    output = {"type": "function_call_output", "call_id": call.call_id, "output": forecast}
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model=MODEL, previous_response_id=asked.id, input=[output], temperature=1.0
        )
    assert caught.value.param == "input"
    requests = len(llm.requests)
    await client.responses.create(model=MODEL, previous_response_id=asked.id, input=[output])
    tool_round = next(
        r.body or {}
        for r in llm.requests[requests:]
        if ((r.body or {}).get("messages") or [{}])[-1].get("role") == "tool"
    )
    assert tool_round["temperature"] == 0.5


async def test_a_function_call_streamed(client: openai.AsyncOpenAI) -> None:
    stream = await client.responses.create(
        model=MODEL, input="And the weather in Paris?", tools=[WEATHER_TOOL], stream=True
    )
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = events[4]
    assert done.type == "response.function_call_arguments.done"
    assert (done.name, json.loads(done.arguments)) == ("get_weather", {"city": "Paris"})
    assert events[2].type == "response.output_item.added"
    assert events[2].item.id == done.item_id
    final = events[-1]
    assert final.type == "response.completed"
    assert [item.type for item in final.response.output] == ["function_call"]
    # The next response answers the call, streamed too.
    answer = await client.responses.create(
        model=MODEL,
        previous_response_id=final.response.id,
        input=[
            {"type": "function_call_output", "call_id": "call_1", "output": '{"forecast": "rainy"}'}
        ],
        stream=True,
    )
    texts = [e.delta async for e in answer if e.type == "response.output_text.delta"]
    assert "".join(texts) == "It is rainy."


async def test_previous_response_id_chains_without_a_conversation(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    first = await client.responses.create(model=MODEL, input="My favorite color is green.")
    second = await client.responses.create(
        model=MODEL, input="What did I just tell you?", previous_response_id=first.id
    )
    assert second.output_text == "You told me: My favorite color is green."
    assert second.previous_response_id == first.id
    third = await client.responses.create(
        model=MODEL, input="What did I say first?", previous_response_id=second.id
    )
    assert len(_prompts(llm)[-1]) == 5  # the whole chain reached the model
    assert first.conversation is not None
    assert third.conversation is not None
    assert third.conversation.id == first.conversation.id


async def test_previous_response_id_of_an_older_response_answers_on_a_fork(
    client: openai.AsyncOpenAI, api: Api
) -> None:
    first = await client.responses.create(model=MODEL, input="My favorite color is green.")
    second = await client.responses.create(
        model=MODEL, input="Now it is purple.", previous_response_id=first.id
    )
    assert first.conversation is not None
    assert second.conversation is not None
    assert second.conversation.id == first.conversation.id
    # Back to the first response: the answer sees the first turn, not the second.
    branch = await client.responses.create(
        model=MODEL, input="What did I just tell you?", previous_response_id=first.id
    )
    assert branch.output_text == "You told me: My favorite color is green."
    assert branch.previous_response_id == first.id
    assert branch.conversation is not None
    fork = branch.conversation.id
    assert fork != first.conversation.id
    forked = await client.conversations.items.list(fork, order="asc")
    assert [i.content[0].text for i in forked.data] == [  # type: ignore[union-attr]
        "My favorite color is green.",
        "You said: My favorite color is green.",
        "What did I just tell you?",
        "You told me: My favorite color is green.",
    ]
    original = await client.conversations.items.list(first.conversation.id)
    assert len(original.data) == 4  # untouched
    # A reply refused on the fork leaves no fork behind.
    before = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model=MODEL, input="Hi", previous_response_id=first.id, metadata={"user_id": "bob"}
        )
    assert caught.value.param == "metadata.user_id"
    after = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in after.threads] == [t.thread_id for t in before.threads]


async def test_several_input_items_are_history_and_the_last_is_answered(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    made = await client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": [{"type": "input_text", "text": "What did I say?"}]},
        ],
    )
    assert made.output_text == "You told me: My name is Ada."
    assert [(m["role"], m["content"]) for m in _prompts(llm)[-1]] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello Ada."),
        ("user", "What did I say?"),
    ]
    assert made.conversation is not None
    conversation = made.conversation.id
    # In an existing conversation, after what it already holds.
    later = await client.responses.create(
        model=MODEL,
        conversation=conversation,
        input=[
            {"type": "message", "role": "user", "content": "I live in Oslo."},
            {"type": "message", "role": "user", "content": "What did I just tell you?"},
        ],
    )
    assert later.output_text == "You told me: I live in Oslo."
    items = await client.conversations.items.list(conversation, order="asc")
    assert len(items.data) == 7
    inputs = await client.responses.input_items.list(later.id, order="asc")
    assert [i.content[0].text for i in inputs.data] == [  # type: ignore[union-attr]
        "I live in Oslo.",
        "What did I just tell you?",
    ]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model=MODEL,
            conversation=conversation,
            input=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ],
        )
    assert caught.value.param == "input[1]"
    assert len((await client.conversations.items.list(conversation)).data) == 7
    # A function call and its output, as history before the message.
    with_tools = await client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "Weather in Rome?"},
            {
                "type": "function_call",
                "call_id": "call_3",
                "name": "get_weather",
                "arguments": '{"city": "Rome"}',
            },
            {"type": "function_call_output", "call_id": "call_3", "output": '{"forecast": "dry"}'},
            {"role": "user", "content": "What did I say?"},
        ],
    )
    assert with_tools.output_text == "You told me: Weather in Rome?"
    prompt = _prompts(llm)[-1]
    assert [m["role"] for m in prompt] == ["user", "assistant", "tool", "user"]
    assert prompt[1]["tool_calls"][0]["id"] == prompt[2]["tool_call_id"] == "call_3"


async def test_a_response_read_back_with_its_input_items(client: openai.AsyncOpenAI) -> None:
    made = await client.responses.create(
        model=MODEL, input="Remember me", metadata={"ticket": "T-1"}
    )
    fetched = await client.responses.retrieve(made.id)
    assert fetched.id == made.id
    assert fetched.output_text == "You said: Remember me"
    assert fetched.metadata == {"ticket": "T-1"}
    assert fetched.model == MODEL
    inputs = await client.responses.input_items.list(made.id)
    assert [(i.type, i.role, i.content[0].text) for i in inputs.data] == [  # type: ignore[union-attr]
        ("message", "user", "Remember me")
    ]
    assert inputs.has_more is False


async def _memory_assistant(api: Api) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Chef", instructions="You cook.", memory_mode=common_pb2.MEMORY_MODE_AUTO
            )
        ),
    )
    return str(created.assistant.assistant_id)


def _with_memory(body: dict[str, Any]) -> Reply:
    """Extraction finds no new facts; a chat reply says what was remembered."""
    system = _system(body["messages"])
    if EXTRACT_MARK in system:
        return Reply(text='{"facts": []}')
    if RECONCILE_MARK in system:
        return Reply(text='{"operations": []}')
    if "<remembered_facts>" in system:
        facts = system.split("<remembered_facts>")[1].split("</remembered_facts>")[0]
        return Reply(text=f"I remember:{facts.strip()}")
    return Reply(text="Noted.")


async def test_memory_recall_across_two_conversations_of_one_assistant_and_user(
    client: openai.AsyncOpenAI, api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(_with_memory)
    chef = await _memory_assistant(api)
    alice = {"assistant_id": chef, "user_id": "alice"}
    first = await client.conversations.create(metadata=alice)
    await client.responses.create(
        model=MODEL, input="I'm allergic to peanuts.", conversation=first.id
    )
    second = await client.conversations.create(metadata=alice)
    assert second.id != first.id
    reply = await client.responses.create(
        model=MODEL, input="Am I allergic to peanuts?", conversation=second.id
    )
    assert "allergic to peanuts" in reply.output_text
    # Another user of the same assistant recalls nothing of Alice's.
    bob = await client.responses.create(
        model=MODEL,
        input="Am I allergic to peanuts?",
        metadata={"assistant_id": chef, "user_id": "bob"},
    )
    assert bob.output_text == "Noted."


async def test_per_response_instructions_and_tools_reach_the_prompt_of_that_reply_only(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    first = await client.responses.create(
        model=MODEL,
        input="Hello",
        instructions="Answer in French.",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    body = llm.requests[-1].body or {}
    # After the assistant's own instructions.
    assert _system(body["messages"]) == "You are a helpful assistant.\n\nAnswer in French."
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert first.instructions == "Answer in French."
    assert [t.name for t in first.tools] == ["get_weather"]  # type: ignore[union-attr]
    await client.responses.create(model=MODEL, input="Again", previous_response_id=first.id)
    later = llm.requests[-1].body or {}
    assert _system(later["messages"]) == "You are a helpful assistant."  # not carried over
    assert "tools" not in later


def _reply_request(llm: ScriptedLLM, content: str) -> dict[str, Any]:
    """The last chat request whose last message is the user's ``content``
    (not a memory job's)."""
    for request in reversed(llm.requests):
        messages = (request.body or {}).get("messages") or []
        if messages and messages[-1] == {"role": "user", "content": content}:
            return request.body or {}
    raise AssertionError(f"no request asked for a reply to {content!r}")


async def test_generation_settings_reach_the_model_and_come_back_on_the_response(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    response = await client.responses.create(
        model=MODEL, input="Be brief", temperature=0.25, top_p=0.5, max_output_tokens=64
    )
    body = _reply_request(llm, "Be brief")
    assert (body["temperature"], body["top_p"], body["max_completion_tokens"]) == (0.25, 0.5, 64)
    assert "response_format" not in body
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.25, 0.5, 64)
    again = await client.responses.create(
        model=MODEL, input="Plain", previous_response_id=response.id
    )
    later = _reply_request(llm, "Plain")
    assert not {"temperature", "top_p", "max_completion_tokens"} & later.keys()  # that reply only
    assert again.temperature is None


async def test_a_json_schema_text_format_reaches_the_model_and_a_mismatch_is_reported(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "name": "place", "schema": schema, "strict": True}
    llm.script(Reply(text='{"city": "Oslo"}'), Reply(text='{"town": "Bergen"}'))
    good = await client.responses.create(model=MODEL, input="Where?", text={"format": fmt})
    body = _reply_request(llm, "Where?")
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "place", "schema": schema, "strict": True},
    }
    assert json.loads(good.output_text) == {"city": "Oslo"}
    assert good.text is not None
    assert good.text.format is not None
    assert good.text.format.model_dump(by_alias=True, exclude_none=True) == fmt
    assert "schema_error" not in (good.model_extra or {})
    bad = await client.responses.create(model=MODEL, input="And?", text={"format": fmt})
    assert bad.status == "completed"  # the text as the model wrote it, with why it misses
    assert "/: 'city' is a required property" in (bad.model_extra or {})["schema_error"]
    plain = await client.responses.create(
        model=MODEL, input="Mode", text={"format": {"type": "json_object"}}
    )
    assert _reply_request(llm, "Mode")["response_format"] == {"type": "json_object"}
    assert plain.text is not None
    assert plain.text.format is not None
    assert plain.text.format.type == "json_object"


async def test_an_out_of_range_temperature_is_400_naming_it_and_reaches_no_model(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    requests = len(llm.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, input="Too hot", temperature=3.5)
    assert caught.value.param == "temperature"
    assert caught.value.message.endswith(" - temperature is 3.5; it must be 0 to 2")
    assert len(llm.requests) == requests


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "x", "store": False}, "store"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "stream_everything": True}, "stream_everything"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0].type"),
        ({"input": ""}, "input"),
        ({"input": "x", "metadata": {"user_id": 5}}, "metadata.user_id"),
        ({"input": "x", "metadata": {"assistant_id": "nope"}}, "metadata.assistant_id"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "top_p": 1.5}, "top_p"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}},
         "text.format.name"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
         "text.format.schema"),
        ({"input": "x", "reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": "x", "conversation": "thread_x", "previous_response_id": "resp_x"},
         "previous_response_id"),
    ],
)  # fmt: skip
async def test_requests_loom_refuses_are_400_naming_the_param(
    client: openai.AsyncOpenAI, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model=MODEL, extra_body=fields)
    assert caught.value.status_code == 400
    assert caught.value.param == param
    assert caught.value.message
    assert caught.value.type == "invalid_request_error"


async def test_unknown_conversations_and_responses_are_not_found(
    client: openai.AsyncOpenAI, loom: Loom, llm: ScriptedLLM
) -> None:
    requests = len(llm.requests)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(
            model=MODEL, input="Hi", conversation="thread_000000000000000000000000"
        )
    assert caught.value.code == "thread_not_found"
    assert "conversation 'thread_000000000000000000000000' not found" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="Hi", conversation="conv_123")
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_000000000000000000000000")
    with pytest.raises(openai.NotFoundError):
        await client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_nope")
    assert len(llm.requests) == requests  # nothing reached the model
    # Another tenant's response is not found either.
    mine = await client.responses.create(model=MODEL, input="Mine")
    other_key = (await loom.keys.create("someone-else")).secret
    async with openai_for(loom, other_key) as other:
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id)
        assert mine.conversation is not None
        with pytest.raises(openai.NotFoundError):
            await other.conversations.retrieve(mine.conversation.id)


async def test_a_busy_conversation_is_409_and_free_again_after(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    conversation = await client.conversations.create()
    llm.script(Reply(text="slow and steady", chunk_delay=0.3))
    stream = await client.responses.create(
        model=MODEL, input="Take your time", conversation=conversation.id, stream=True
    )
    events = aiter(stream)
    assert (await anext(events)).type == "response.created"
    with pytest.raises(openai.ConflictError) as caught:
        await client.responses.create(model=MODEL, input="Me too", conversation=conversation.id)
    assert caught.value.code == "thread_busy"
    assert [e.type async for e in events][-1] == "response.completed"
    done = await client.responses.create(model=MODEL, input="Now?", conversation=conversation.id)
    assert done.status == "completed"


async def test_a_model_failure_before_text_is_an_error_not_to_retry(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    llm.script(Fail(status=500), Fail(status=500), Fail(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model=MODEL, input="Hello?")
    assert caught.value.status_code == 503
    assert caught.value.code == "model_unavailable"
    # The user's message is stored: a retry would send it twice.
    assert caught.value.response.headers["x-should-retry"] == "false"


async def test_a_model_failure_mid_stream_ends_the_stream_failed(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    llm.script(Reply(text="one two three four", break_after=2))
    stream = await client.responses.create(model=MODEL, input="Go", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "server_error"
    stored = await client.responses.retrieve(failed.response.id)
    assert stored.status == "failed"
    assert stored.output_text  # what arrived before the break is kept


async def test_the_wire_is_openai_s_server_sent_events(
    loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    """As curl sees it: named events, one JSON object each."""
    llm.set_default(converse)
    async with (
        httpx.AsyncClient(base_url=base_url(loom), timeout=30) as http,
        http.stream(
            "POST",
            "/responses",
            headers={"Authorization": f"Bearer {api.key}"},
            json={"model": MODEL, "input": "Hi", "stream": True},
        ) as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        body = "".join([chunk async for chunk in answer.aiter_text()])
    blocks = [b for b in body.split("\n\n") if b]
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ")
        assert data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert blocks[-1].startswith("event: response.completed")


async def test_a_stream_cut_by_the_client_stores_the_reply_incomplete(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    llm.script(Reply(text="a b c d e f g h", chunk_delay=0.3))
    stream = await client.responses.create(model=MODEL, input="Long one", stream=True)
    response_id = ""
    async for event in stream:
        if event.type == "response.output_text.delta":
            response_id = event.item_id.replace("msg_", "resp_")
            break
    await stream.close()
    for _ in range(100):
        stored = await client.responses.retrieve(response_id)
        if stored.status != "in_progress":
            break
        await asyncio.sleep(0.05)
    assert stored.status == "incomplete"


async def _events_of(answer: httpx.Response, into: list[dict[str, Any]]) -> None:
    """Read a stream's events into ``into`` until it ends or breaks."""
    with contextlib.suppress(httpx.TransportError):
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                into.append(json.loads(line.removeprefix("data: ")))


async def test_a_graceful_stop_lets_streams_finish_within_the_grace_and_cuts_the_rest(
    ferretdb: FerretDB, llm: ScriptedLLM, loom: Loom
) -> None:
    door = await start_loom(
        make_settings(ferretdb, llm, mongodb_db=loom.settings.mongodb_db, shutdown_grace=1.5)
    )
    key = (await door.keys.create(f"t-{uuid.uuid4().hex[:12]}")).secret
    llm.script(
        Reply(text="one two three four", chunk_delay=0.2),
        Reply(text=" ".join(f"w{i}" for i in range(12)), chunk_delay=0.5),
    )
    short: list[dict[str, Any]] = []
    long: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=base_url(door), headers=headers, timeout=30) as http,
        http.stream("POST", "/responses", json={"input": "short", "stream": True}) as first,
        http.stream("POST", "/responses", json={"input": "long", "stream": True}) as second,
    ):
        reading = [
            asyncio.ensure_future(_events_of(first, short)),
            asyncio.ensure_future(_events_of(second, long)),
        ]
        assert await eventually(lambda: len(short) > 2 and len(long) > 2)
        stopping = asyncio.ensure_future(door.stop())
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=base_url(door), headers=headers) as late:
            with pytest.raises(httpx.ConnectError):  # no new connections meanwhile
                await late.post("/conversations", json={})
        await asyncio.gather(*reading)
        await stopping
    assert short[-1]["type"] == "response.completed"
    assert short[-1]["response"]["output"][0]["content"][0]["text"] == "one two three four"
    assert long[-1]["type"] != "response.completed"  # cut at the end of the grace
    # The cut reply was stored INCOMPLETE (read through the session's Loom:
    # the same database).
    async with openai_for(loom, key) as client:
        stored = await client.responses.retrieve(long[0]["response"]["id"])
    assert stored.status == "incomplete"
    assert stored.output_text.startswith("w0 w1")
