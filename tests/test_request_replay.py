"""A SendMessage retried with its request_id after the reply went through
tool rounds: the retry sees what the first attempt finally produced (the
run's last reply), or the tool calls the run still waits for."""

from __future__ import annotations

import grpc

from generated.loom.v1 import generation_pb2, thread_pb2
from tests.conftest import Api, expect_error
from tests.scripted_llm import Fail, Reply, ScriptedLLM
from tests.test_tools import TIME, WEATHER, Model, _assistant, _submit, _tool

TWO_ROUNDS = [
    [{"id": "call_a", "name": "get_weather", "arguments": '{"city": "Oslo"}'}],
    [{"id": "call_b", "name": "get_time", "arguments": '{"city": "Oslo"}'}],
]


def _kinds(events: list[thread_pb2.SendMessageResponse]) -> list[str]:
    return [str(e.WhichOneof("event")) for e in events]


async def test_a_retry_while_the_run_waits_gets_its_tool_calls_again(
    api: Api, llm: ScriptedLLM
) -> None:
    model = Model(rounds=TWO_ROUNDS)
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER, TIME)
    first = await api.send(content="weather in Oslo?", assistant_id=assistant_id, request_id="r1")
    waiting = first[-1].tool_calls_required
    again = await api.send(content="weather in Oslo?", assistant_id=assistant_id, request_id="r1")
    assert _kinds(again) == ["started", "delta", "tool_calls_required"]
    assert again[0].started == first[0].started
    assert again[-1].tool_calls_required == waiting
    assert len(model.bodies) == 1

    # After one submission the run waits for the second round's calls.
    thread_id = first[0].started.thread_id
    second = await _submit(api, thread_id, waiting.run_id, {"call_a": "snow"})
    round_two = second[-1].tool_calls_required
    again = await api.send(content="weather in Oslo?", assistant_id=assistant_id, request_id="r1")
    assert _kinds(again)[-1] == "tool_calls_required"
    assert again[-1].tool_calls_required == round_two
    assert again[0].started.assistant_message_id == round_two.message_id
    assert again[0].started.user_message_id == first[0].started.user_message_id
    assert len(model.bodies) == 2


async def test_a_retry_after_the_run_completed_gets_its_final_reply(
    api: Api, llm: ScriptedLLM
) -> None:
    model = Model(rounds=TWO_ROUNDS)
    llm.set_default(model)
    assistant_id = await _assistant(api, WEATHER, TIME)
    first = await api.send(content="weather in Oslo?", assistant_id=assistant_id, request_id="r2")
    run_id = first[-1].tool_calls_required.run_id
    thread_id = first[0].started.thread_id
    await _submit(api, thread_id, run_id, {"call_a": "snow"})
    final = (await _submit(api, thread_id, run_id, {"call_b": "09:00"}))[-1].completed.message
    assert final.content == "It is 09:00."

    again = await api.send(content="weather in Oslo?", assistant_id=assistant_id, request_id="r2")
    assert _kinds(again) == ["started", "delta", "completed"]
    assert again[0].started.thread_id == thread_id
    assert again[0].started.thread_created
    assert again[0].started.assistant_message_id == final.message_id
    assert again[1].delta.text == final.content
    assert again[-1].completed.message == final
    assert len(model.bodies) == 3


async def test_a_retry_after_the_run_was_cancelled_gets_the_cancelled_reply(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(Model())
    assistant_id = await _assistant(api, WEATHER)
    first = await api.send(content="weather?", assistant_id=assistant_id, request_id="r3")
    waiting = first[-1].tool_calls_required
    thread_id = first[0].started.thread_id
    await api.call(
        api.threads.CancelRun,
        thread_pb2.CancelRunRequest(thread_id=thread_id, run_id=waiting.run_id),
    )
    again = await api.send(content="weather?", assistant_id=assistant_id, request_id="r3")
    assert _kinds(again)[-1] == "completed"
    assert again[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_CANCELLED
    assert again[-1].completed.message.message_id == waiting.message_id
    # The run is over: submitting to it is refused, as before the retry.
    await expect_error(
        api.threads.SubmitToolOutputs(
            thread_pb2.SubmitToolOutputsRequest(thread_id=thread_id, run_id=waiting.run_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_retry_after_a_model_outage_runs_with_its_own_tools_and_settings(
    api: Api, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(api, WEATHER, TIME)
    request = thread_pb2.SendMessageRequest(
        content="what time is it?",
        assistant_id=assistant_id,
        request_id="r4",
        tools=[_tool(TIME)],
        tool_choice="get_time",
        generation=generation_pb2.GenerationSettings(temperature=0.0, seed=5),
    )
    llm.script(*[Fail(status=503)] * 3)
    await expect_error(
        api.threads.SendMessage(request, metadata=api.metadata),
        grpc.StatusCode.UNAVAILABLE,
        "MODEL_UNAVAILABLE",
    )
    llm.script(Reply(text="Noon."))
    retry = [e async for e in api.threads.SendMessage(request, metadata=api.metadata)]
    assert retry[-1].completed.message.content == "Noon."
    body = llm.requests[-1].body
    assert (body["temperature"], body["seed"]) == (0, 5)
    assert [t["function"]["name"] for t in body["tools"]] == ["get_time"]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
