"""The summary model is fitted to its own context window: a thread whose
reply model has a large window, summarised by a model with a small one,
never sends the summary model more than that window (the fold is made in
several calls). Real service, scripted model over HTTP."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core.summaries import SUMMARY_PROMPT
from service.llm.tokens import TokenBudgets
from service.llm.windows import lookup_window
from service.server import Loom
from tests.conftest import Api, make_settings, new_tenant_key, start_loom
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB

SUMMARY_MARK = SUMMARY_PROMPT.split("\n", 1)[0]
SUMMARY_MODEL = "gpt-4"  # 8,192 tokens in the registry
REPLY_WINDOW = 32_000


def _is_summary(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and str(messages[0]["content"]).startswith(SUMMARY_MARK)


@pytest.fixture
async def small_summaries(ferretdb: FerretDB, llm: ScriptedLLM) -> AsyncIterator[Loom]:
    loom = await start_loom(
        make_settings(ferretdb, llm, mongodb_db="loom_summary_window", summary_model=SUMMARY_MODEL)
    )
    yield loom
    await loom.stop(0)


async def test_a_smaller_summary_model_never_receives_more_than_its_window(
    small_summaries: Loom, llm: ScriptedLLM
) -> None:
    window = lookup_window(SUMMARY_MODEL)
    assert window == 8192
    folds = 0

    def route(body: dict[str, Any]) -> Reply:
        nonlocal folds
        if _is_summary(body):
            folds += 1
            return Reply(text=f"Summary {folds} of the talk so far.")
        return Reply(text="Noted: " + body["messages"][-1]["content"][:6000])

    llm.set_default(route)
    rng = random.Random(7)  # noqa: S311 - sample text
    words = [f"{w}{n}" for w in ("river", "stone", "amber", "falcon", "copper") for n in range(40)]
    async with aio.insecure_channel(f"127.0.0.1:{small_summaries.port}") as channel:
        api = Api(channel, await new_tenant_key(small_summaries))
        created = await api.call(
            api.assistants.CreateAssistant,
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    instructions="Be brief.", context_window=REPLY_WINDOW
                )
            ),
        )
        thread_id = ""
        for _ in range(10):
            content = " ".join(rng.choice(words) for _ in range(1200))
            events = await api.send(
                content=content, assistant_id=created.assistant.assistant_id, thread_id=thread_id
            )
            thread_id = events[0].started.thread_id

        async def summarised() -> bool:
            got = await api.call(
                api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)
            )
            return got.thread.HasField("summary")

        for _ in range(200):
            if await summarised():
                break
            await asyncio.sleep(0.05)
        assert await summarised()

    counter = TokenBudgets()
    calls = [r.body for r in llm.requests if r.body and _is_summary(r.body)]
    assert {body["model"] for body in calls} == {SUMMARY_MODEL}
    # One fold of far more than 8,192 tokens of messages, in several calls...
    assert len(calls) >= 2
    for body in calls:
        sent = sum(counter.count(m["content"]) + 4 for m in body["messages"])
        # ...each of which fits the summary model's window with room to answer.
        assert sent * counter.ratio(SUMMARY_MODEL) <= window - 1024, sent
