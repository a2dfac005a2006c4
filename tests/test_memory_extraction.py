"""Fact extraction against models as they are: structured output where the
endpoint takes it (and the fallback when it refuses), reasoning blocks
before the JSON, and a malformed answer asked for again once, then skipped
with the reason on the operation. Real service, scripted model over HTTP."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from grpc import aio

from generated.loom.v1 import memory_pb2
from service.memory.extraction import parse_facts
from service.server import Loom
from tests.conftest import new_tenant_key
from tests.scripted_llm import Fail, Reply, ScriptedLLM
from tests.test_memory import EXTRACT_MARK, Mem, _assistant, _settled, _system

V = memory_pb2


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


def _extractions(llm: ScriptedLLM) -> list[dict[str, Any]]:
    return [r.body for r in llm.requests if r.body and EXTRACT_MARK in _system(r.body)]


async def _learn(
    api: Mem, llm: ScriptedLLM, answer: Any, said: str, model: str = ""
) -> tuple[V.MemoryOperation, list[str]]:
    """Send ``said``; extraction requests get ``answer(body, n)`` (n from 1).
    The operation, and the content of the memories it added."""
    count = 0

    def route(body: dict[str, Any]) -> Reply | Fail:
        nonlocal count
        if EXTRACT_MARK in _system(body):
            count += 1
            step = answer(body, count)
            return step if isinstance(step, Reply | Fail) else Reply(text=step)
        return Reply(text="Noted.")

    llm.set_default(route)
    assistant_id = await _assistant(api)
    events = await api.send(
        content=said, assistant_id=assistant_id, user_id="u", **({"model": model} if model else {})
    )
    op = await _settled(api, events[-1].completed.memory_operation_id)
    assert op.state == V.MemoryOperation.STATE_SUCCEEDED, op.error
    added = []
    for memory_id in op.added_memory_ids:
        got = await api.call(
            api.memory.GetMemory, V.GetMemoryRequest(assistant_id=assistant_id, memory_id=memory_id)
        )
        added.append(got.memory.content)
    return op, added


async def test_extraction_asks_for_structured_output(mem: Mem, llm: ScriptedLLM) -> None:
    facts = json.dumps({"facts": ["The user plays the cello."]})
    _, added = await _learn(mem, llm, lambda body, n: facts, "I play the cello.")
    [body] = _extractions(llm)
    assert body["response_format"]["type"] == "json_schema"
    schema = body["response_format"]["json_schema"]
    assert schema["name"] == "facts"
    assert schema["strict"] is True
    assert schema["schema"]["required"] == ["facts"]
    assert added == ["The user plays the cello."]


async def test_a_model_that_refuses_the_schema_gets_json_mode_and_is_remembered(
    mem: Mem, llm: ScriptedLLM
) -> None:
    model = f"json-mode-only-{uuid.uuid4().hex[:6]}"  # what this process learns is per model

    def answer(body: dict[str, Any], n: int) -> Reply | Fail | str:
        if body.get("response_format", {}).get("type") == "json_schema":
            return Fail(400, "response_format of type json_schema is not supported by this model")
        return json.dumps({"facts": [f"The user said thing {n}."]})

    _, added = await _learn(mem, llm, answer, "I said a thing.", model)
    assert [b["response_format"]["type"] for b in _extractions(llm)] == [
        "json_schema",
        "json_object",
    ]
    assert added == ["The user said thing 2."]
    # The next extraction with that model goes to JSON mode at once.
    llm.reset()
    await _learn(mem, llm, answer, "I said another thing.", model)
    assert [b["response_format"]["type"] for b in _extractions(llm)] == ["json_object"]


async def test_a_model_that_refuses_any_format_gets_plain_text(mem: Mem, llm: ScriptedLLM) -> None:
    model = f"plain-only-{uuid.uuid4().hex[:6]}"

    def answer(body: dict[str, Any], n: int) -> Reply | Fail | str:
        if "response_format" in body:
            return Fail(400, "Unrecognized request argument supplied: response_format")
        return 'Here you go: {"facts": ["The user rows on Sundays."]}'

    _, added = await _learn(mem, llm, answer, "I row on Sundays.", model)
    assert ["response_format" in b for b in _extractions(llm)] == [True, True, False]
    assert added == ["The user rows on Sundays."]


async def test_reasoning_blocks_are_set_aside(mem: Mem, llm: ScriptedLLM) -> None:
    answer = (
        '<think>The user mentions a cat. Maybe {"facts": ["wrong"]}? No.</think>\n'
        '{"facts": ["The user has a cat called Tofu."]}'
    )
    _, added = await _learn(mem, llm, lambda body, n: answer, "My cat is called Tofu.")
    assert added == ["The user has a cat called Tofu."]
    assert parse_facts('<THINK>\n{ not json }\n</THINK>{"facts": []}') == []


async def test_a_malformed_answer_is_asked_for_again_with_the_reason(
    mem: Mem, llm: ScriptedLLM
) -> None:
    def answer(body: dict[str, Any], n: int) -> str:
        return '{"facts": "The user skis."}' if n == 1 else '{"facts": ["The user skis."]}'

    op, added = await _learn(mem, llm, answer, "I ski every winter.")
    _, second = _extractions(llm)
    assert second["messages"][-2] == {"role": "assistant", "content": '{"facts": "The user skis."}'}
    assert 'has no "facts" list' in second["messages"][-1]["content"]
    assert added == ["The user skis."]
    assert list(op.warnings) == []


async def test_an_answer_malformed_twice_is_skipped_with_the_reason_on_the_operation(
    mem: Mem, llm: ScriptedLLM
) -> None:
    op, added = await _learn(mem, llm, lambda body, n: "Sure! The user likes jazz.", "I like jazz.")
    assert len(_extractions(llm)) == 2
    assert added == []
    [warning] = op.warnings
    assert "fact extraction skipped" in warning
    assert "no JSON object" in warning
