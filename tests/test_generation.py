"""Generation settings and structured output: an assistant's defaults, a
message's override field by field, what reaches the endpoint, the check of a
reply against its JSON Schema, and the settings carried over tool rounds."""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format

from generated.loom.v1 import assistant_pb2, generation_pb2, thread_pb2
from service.core.generation import GenerationSettings, ResponseFormat
from service.llm.params import generation_params
from tests.conftest import Api, expect_error
from tests.scripted_llm import Reply, ScriptedLLM
from tests.test_tools import WEATHER, Model, _messages, _submit, _tool

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Every parameter a setting maps to; a body must hold only the ones set.
PARAMETERS = (
    "temperature",
    "top_p",
    "max_completion_tokens",
    "max_tokens",
    "stop",
    "seed",
    "reasoning_effort",
    "response_format",
)


def _settings(**fields: Any) -> generation_pb2.GenerationSettings:
    return json_format.ParseDict(fields, generation_pb2.GenerationSettings())


def _sent(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in PARAMETERS if k in body}


async def _assistant(api: Api, **generation: Any) -> assistant_pb2.Assistant:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Settings",
                instructions="Answer in JSON.",
                tools=[_tool(WEATHER)],
                generation=_settings(**generation) if generation else None,
            )
        ),
    )
    return created.assistant


async def test_assistant_defaults_reach_the_endpoint_and_a_message_overrides_them(
    api: Api, llm: ScriptedLLM
) -> None:
    assistant = await _assistant(
        api,
        temperature=0.5,
        maxOutputTokens=300,
        stop=["END"],
        reasoningEffort="REASONING_EFFORT_LOW",
    )
    got = await api.call(
        api.assistants.GetAssistant,
        assistant_pb2.GetAssistantRequest(assistant_id=assistant.assistant_id),
    )
    assert got.assistant.generation == assistant.generation
    assert got.assistant.generation.temperature == 0.5
    assert not got.assistant.generation.HasField("seed")

    await api.send(content="hello", assistant_id=assistant.assistant_id)
    defaults = {
        "temperature": 0.5,
        "max_completion_tokens": 300,
        "stop": ["END"],
        "reasoning_effort": "low",
    }
    assert _sent(llm.requests[-1].body) == defaults

    # Zero is a value, not "unset": temperature 0 and seed 0 override.
    override = _settings(temperature=0, seed=0, topP=0.9)
    await api.send(content="again", assistant_id=assistant.assistant_id, generation=override)
    assert _sent(llm.requests[-1].body) == {**defaults, "temperature": 0, "seed": 0, "top_p": 0.9}

    # A non-empty stop list replaces the assistant's; an empty one keeps it.
    await api.send(
        content="stop", assistant_id=assistant.assistant_id, generation=_settings(stop=["A", "B"])
    )
    assert _sent(llm.requests[-1].body)["stop"] == ["A", "B"]


async def test_no_settings_leave_the_endpoint_its_defaults(api: Api, llm: ScriptedLLM) -> None:
    await api.send(content="plain")
    assert _sent(llm.requests[-1].body) == {}
    assistant = await _assistant(api)
    await api.send(
        content="json please",
        assistant_id=assistant.assistant_id,
        generation=_settings(responseFormat={"jsonObject": {}}),
    )
    assert _sent(llm.requests[-1].body) == {"response_format": {"type": "json_object"}}


async def test_update_mask_generation_replaces_the_settings_whole(api: Api) -> None:
    assistant = await _assistant(api, temperature=1.5, seed=42)
    updated = await api.call(
        api.assistants.UpdateAssistant,
        assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                assistant_id=assistant.assistant_id, generation=_settings(topP=0.5)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["generation"]),
        ),
    )
    assert updated.assistant.generation == _settings(topP=0.5)
    cleared = await api.call(
        api.assistants.UpdateAssistant,
        assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(assistant_id=assistant.assistant_id),
            update_mask=field_mask_pb2.FieldMask(paths=["generation"]),
        ),
    )
    assert not cleared.assistant.HasField("generation")
    assert cleared.assistant.name == "Settings"


async def test_a_reply_that_matches_its_schema_has_no_schema_error(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.script(Reply(text='{"name": "Ada", "age": 36}'))
    fmt = {"jsonSchema": {"name": "person", "schema": PERSON, "strict": True}}
    events = await api.send(content="who?", generation=_settings(responseFormat=fmt))
    done = events[-1].completed.message
    assert done.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert done.schema_error == ""
    assert llm.requests[-1].body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"name": "Ada", "age": -1}', "at /age: -1 is less than the minimum of 0"),
        ('{"name": "Ada"}', "'age' is a required property"),
        ("Sure! Here is the JSON", "the reply is not JSON"),
    ],
)
async def test_a_reply_that_misses_its_schema_is_stored_and_says_why(
    api: Api, llm: ScriptedLLM, text: str, expected: str
) -> None:
    llm.script(Reply(text=text))
    assistant = await _assistant(
        api, responseFormat={"jsonSchema": {"name": "person", "schema": PERSON}}
    )
    events = await api.send(content="who?", assistant_id=assistant.assistant_id)
    done = events[-1].completed.message
    assert done.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert done.content == text
    assert expected in done.schema_error
    stored = (await _messages(api, done.thread_id))[-1]
    assert stored.message_id == done.message_id
    assert stored.schema_error == done.schema_error


async def test_settings_carry_over_tool_rounds(api: Api, llm: ScriptedLLM) -> None:
    model = Model()
    llm.set_default(model)
    assistant = await _assistant(api, temperature=0.2)
    fmt = {"jsonSchema": {"name": "person", "schema": PERSON}}
    events = await api.send(
        content="weather?",
        assistant_id=assistant.assistant_id,
        generation=_settings(maxOutputTokens=50, responseFormat=fmt),
    )
    required = events[-1].tool_calls_required
    expected = {
        "temperature": 0.2,
        "max_completion_tokens": 50,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": False},
        },
    }
    assert _sent(model.bodies[-1]) == expected
    # The assistant changes meanwhile: the run keeps what it started with.
    await api.call(
        api.assistants.UpdateAssistant,
        assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                assistant_id=assistant.assistant_id, generation=_settings(temperature=1.9)
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["generation"]),
        ),
    )
    thread_id = events[0].started.thread_id
    continued = await _submit(api, thread_id, required.run_id, {"call_w1": "sunny"})
    assert _sent(model.bodies[-1]) == expected
    done = continued[-1].completed.message
    assert done.content == "It is sunny."
    assert "the reply is not JSON" in done.schema_error


@pytest.mark.parametrize(
    ("generation", "field"),
    [
        ({"temperature": 2.5}, "generation.temperature"),
        ({"temperature": math.nan}, "generation.temperature"),
        ({"topP": -0.1}, "generation.top_p"),
        ({"maxOutputTokens": 0}, "generation.max_output_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "generation.stop"),
        ({"stop": [""]}, "generation.stop[0]"),
        ({"responseFormat": {}}, "generation.response_format"),
        (
            {"responseFormat": {"jsonSchema": {"schema": PERSON}}},
            "generation.response_format.json_schema.name",
        ),
        (
            {"responseFormat": {"jsonSchema": {"name": "p"}}},
            "generation.response_format.json_schema.schema",
        ),
        (
            {"responseFormat": {"jsonSchema": {"name": "p", "schema": {"type": "nope"}}}},
            "generation.response_format.json_schema.schema",
        ),
    ],
)
async def test_bad_settings_are_refused_with_the_field_named(
    api: Api, llm: ScriptedLLM, generation: dict[str, Any], field: str
) -> None:
    before = len(llm.requests)
    pb = generation_pb2.GenerationSettings()
    if "temperature" in generation and math.isnan(generation["temperature"]):
        pb.temperature = math.nan
    else:
        json_format.ParseDict(generation, pb)
    error = await expect_error(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", generation=pb), metadata=api.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field in error.details()
    assert len(llm.requests) == before
    # The same settings on an assistant are refused under its own name.
    error = await expect_error(
        api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(generation=pb)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "assistant." + field in error.details()
    page = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert list(page.threads) == []


def test_the_output_limit_goes_in_the_field_the_endpoint_reads() -> None:
    settings = GenerationSettings(max_output_tokens=64, response_format=ResponseFormat("text"))
    assert generation_params(settings) == {
        "max_completion_tokens": 64,
        "response_format": {"type": "text"},
    }
    assert generation_params(settings, "max_tokens")["max_tokens"] == 64
    assert json.dumps(generation_params(GenerationSettings())) == "{}"


async def test_the_prompt_leaves_room_for_the_output_limit(api: Api, llm: ScriptedLLM) -> None:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                context_window=2048, context_strategy=assistant_pb2.CONTEXT_STRATEGY_TRUNCATE
            )
        ),
    )
    assistant_id = created.assistant.assistant_id
    events = await api.send(content="Let us count words together.", assistant_id=assistant_id)
    thread_id = events[0].started.thread_id
    for i in range(15):
        await api.send(content=f"Message {i}: " + "word " * 20, thread_id=thread_id)
    await api.send(content="How far did we get?", thread_id=thread_id)
    whole = llm.requests[-1].body["messages"]
    assert len(whole) == 2 * 16 + 1  # every earlier turn, and the new message
    limited = _settings(maxOutputTokens=1700)
    await api.send(content="How far did we get?", thread_id=thread_id, generation=limited)
    fitted = llm.requests[-1].body["messages"]
    # 2048 - 1700 tokens: the oldest turns are left out, the newest kept.
    words = [sum(len(m["content"].split()) for m in b) for b in (whole, fitted)]
    assert words[0] > 2048 - 1700 >= words[1]
    assert 2 < len(fitted) < len(whole)
    assert fitted[-1]["content"] == "How far did we get?"
    assert fitted[-2]["content"] == "Echo: How far did we get?"
