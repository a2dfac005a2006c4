"""The model client's one retry policy, for streamed and whole replies alike,
against the scripted model over HTTP (a server of its own, so no other
test's background jobs take its scripted steps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from service.core.errors import FailedPrecondition, LoomError, ResourceExhausted, Unavailable
from service.core.ports import ChatTurn
from service.llm.openai_chat import OpenAIChatModel
from tests.scripted_llm import Fail, Reply, ScriptedLLM

Ask = Callable[[OpenAIChatModel], Awaitable[str]]
PROMPT = [ChatTurn("user", "hello")]


@pytest.fixture(scope="module")
def own_llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture
async def client(own_llm: ScriptedLLM) -> AsyncIterator[OpenAIChatModel]:
    own_llm.reset()
    model = OpenAIChatModel(
        base_url=own_llm.base_url,
        api_key="test",
        timeout=10.0,
        max_retries=2,
        retry_base_delay=0.01,
    )
    yield model
    await model.close()


async def _streamed(model: OpenAIChatModel) -> str:
    return "".join([c.text async for c in model.stream("gpt-4o", PROMPT)])


async def _whole(model: OpenAIChatModel) -> str:
    return await model.complete("gpt-4o", PROMPT)


CALLS = [pytest.param(_streamed, id="stream"), pytest.param(_whole, id="complete")]


@pytest.mark.parametrize("ask", CALLS)
async def test_retryable_failures_are_retried_until_an_answer(
    client: OpenAIChatModel, own_llm: ScriptedLLM, ask: Ask
) -> None:
    own_llm.script(Fail(500), Fail(429, retry_after_ms=1), Reply(text="third time lucky"))
    assert await ask(client) == "third time lucky"
    assert len(own_llm.requests) == 3


@pytest.mark.parametrize("ask", CALLS)
@pytest.mark.parametrize(
    ("status", "error", "reason"),
    [
        (503, Unavailable, "MODEL_UNAVAILABLE"),
        (429, ResourceExhausted, "MODEL_RATE_LIMITED"),
    ],
)
async def test_retries_run_out_after_max_retries(
    client: OpenAIChatModel,
    own_llm: ScriptedLLM,
    ask: Ask,
    status: int,
    error: type[LoomError],
    reason: str,
) -> None:
    own_llm.script(*[Fail(status, retry_after_ms=1)] * 4)
    with pytest.raises(error) as caught:
        await ask(client)
    assert caught.value.reason == reason
    assert "after 3 attempts" in caught.value.message
    assert len(own_llm.requests) == 3  # the first try and two retries


@pytest.mark.parametrize("ask", CALLS)
async def test_a_refused_request_is_not_retried(
    client: OpenAIChatModel, own_llm: ScriptedLLM, ask: Ask
) -> None:
    own_llm.script(Fail(400, "bad request"), Reply(text="never sent"))
    with pytest.raises(FailedPrecondition) as caught:
        await ask(client)
    assert caught.value.reason == "MODEL_REJECTED_REQUEST"
    assert len(own_llm.requests) == 1


async def test_a_stream_is_not_retried_once_text_reached_the_caller(
    client: OpenAIChatModel, own_llm: ScriptedLLM
) -> None:
    own_llm.script(Reply(text="one two three", break_after=1), Reply(text="never sent"))
    received: list[str] = []

    async def read() -> None:
        async for chunk in client.stream("gpt-4o", PROMPT):
            received.append(chunk.text)

    with pytest.raises(Unavailable) as caught:
        await read()
    assert caught.value.reason == "MODEL_STREAM_BROKEN"
    assert "".join(received)  # the caller had text before the break
    assert len(own_llm.requests) == 1
