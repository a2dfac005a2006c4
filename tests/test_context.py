"""Context windows: budgets, rolling summaries, truncation and model switching."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core.budget import fit, plan_budget, truncate_middle
from service.core.models import ContextEntry, MessageStatus, Recalled, Role, Summary
from service.core.summaries import SUMMARY_PROMPT
from service.llm.tokens import TokenBudgets
from service.llm.windows import lookup_window
from service.server import Loom
from service.store.scoped import object_id
from tests.conftest import Api, eventually
from tests.scripted_llm import Fail, Hang, Reply, ScriptedLLM

COUNTER = TokenBudgets()
SUMMARY_MARK = SUMMARY_PROMPT.split("\n", 1)[0]


def _entry(seq: int, role: Role, text: str) -> ContextEntry:
    return ContextEntry(seq, role, text, MessageStatus.COMPLETE, COUNTER.count(text))


def _tokens(turns: list[Any]) -> int:
    return sum(COUNTER.count(t.content) + COUNTER.message_overhead() for t in turns) + 3


# -- fitting, without a server ------------------------------------------------


async def test_fit_keeps_instructions_and_new_message_and_the_newest_history_in_order() -> None:
    history = [
        _entry(i, Role.USER if i % 2 == 0 else Role.ASSISTANT, f"message number {i} " * 20)
        for i in range(200)
    ]
    new = _entry(200, Role.USER, "the newest question")
    fitted = await fit(
        instructions="Be brief.",
        memories=[],
        summary=None,
        history=history,
        new=new,
        budget=1000,
        ratio=1.0,
        counter=COUNTER,
    )
    assert fitted.turns[0].content == "Be brief."
    assert fitted.turns[-1].content == "the newest question"
    kept = [t.content for t in fitted.turns[1:-1]]
    assert kept == [e.content for e in history[-len(kept) :]]
    assert 0 < len(kept) < 200
    assert fitted.dropped == 200 - len(kept)
    assert _tokens(fitted.turns) <= 1000


async def test_fit_truncates_a_message_larger_than_the_budget_with_a_marker() -> None:
    huge = "word " * 20_000
    fitted = await fit(
        instructions="Be brief.",
        memories=[],
        summary=None,
        history=[],
        new=_entry(0, Role.USER, huge),
        budget=2000,
        ratio=1.0,
        counter=COUNTER,
    )
    assert fitted.truncated
    content = fitted.turns[-1].content
    assert "left out by Loom to fit the context window" in content
    assert content.startswith("word word")
    assert _tokens(fitted.turns) <= 2000


async def test_fit_caps_memories_and_places_summary_before_recent_messages() -> None:
    memories = [Recalled(f"mem_{i:024x}", f"remembered fact {i} " * 30, 1.0) for i in range(50)]
    summary = Summary("Earlier they discussed peanuts.", 9, "m")
    history = [_entry(i, Role.USER, f"recent {i}") for i in range(5, 14)]
    fitted = await fit(
        instructions="Be kind.",
        memories=memories,
        summary=summary,
        history=history,
        new=_entry(14, Role.USER, "and now?"),
        budget=3000,
        ratio=1.0,
        counter=COUNTER,
    )
    system = fitted.turns[0].content
    assert 0 < fitted.memories_used < 50
    assert COUNTER.count(system) < 3000 * 0.15 + 200
    assert "<conversation_summary>" in system
    assert "Earlier they discussed peanuts." in system
    # Entries the summary covers are not repeated verbatim.
    assert [t.content for t in fitted.turns[1:-1]] == [f"recent {i}" for i in range(10, 14)]


def test_budget_reserve_and_model_registry() -> None:
    assert plan_budget(8192) == 8192 - 1024
    assert plan_budget(128_000) == 128_000 - 4096
    assert plan_budget(1024) == 1024 - 256
    assert lookup_window("gpt-4o-mini-2024-07-18") == 128_000
    assert lookup_window("openai/gpt-4o") == 128_000
    assert lookup_window("llama3.1:8b") == 131_072
    assert lookup_window("qwen2.5:7b") == 32_768
    assert lookup_window("no-such-model") is None
    budgets = TokenBudgets(default_window=4096)
    assert budgets.context_window("no-such-model") == 4096
    assert budgets.context_window("gpt-4o", assistant_window=2048) == 2048
    assert TokenBudgets(window_override=9000).context_window("gpt-4o") == 9000


def test_truncate_middle_keeps_both_ends() -> None:
    text = "A" * 500 + "B" * 500
    cut = truncate_middle(text, 300)
    assert cut.startswith("A" * 100)
    assert cut.endswith("B" * 50)
    assert "700 characters left out" in cut


def test_calibration_learns_the_endpoints_ratio() -> None:
    budgets = TokenBudgets()
    assert budgets.ratio("my-local-model") == pytest.approx(1.15)
    for _ in range(30):
        budgets.calibrate("my-local-model", 1000, 1300)
    assert budgets.ratio("my-local-model") == pytest.approx(1.3)
    # One denser text among many: the budget plans for the denser one.
    budgets.calibrate("my-local-model", 1000, 1600)
    assert budgets.ratio("my-local-model") == pytest.approx(1.6)
    for _ in range(40):
        budgets.calibrate("my-local-model", 1000, 1200)
    assert budgets.ratio("my-local-model") == pytest.approx(1.2)
    assert budgets.ratio("gpt-4o") == 1.0


# -- end to end ------------------------------------------------------------------


def _is_summary_request(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and messages[0]["content"].startswith(SUMMARY_MARK)


def _route(summary: Reply | Fail) -> Any:
    count = 0

    def step(body: dict[str, Any]) -> Reply | Fail:
        nonlocal count
        if _is_summary_request(body):
            count += 1
            if isinstance(summary, Reply) and summary.text == "numbered":
                return Reply(text=f"Summary number {count} of the earlier talk.")
            return summary
        last = body["messages"][-1]["content"]
        return Reply(text=f"Reply to: {last[:60]}")

    return step


def _words(body: dict[str, Any]) -> int:
    return sum(len(m["content"].split()) for m in body["messages"])


async def _assistant(api: Api, **fields: Any) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(instructions="Be brief.", **fields)
        ),
    )
    return str(created.assistant.assistant_id)


async def _thread(api: Api, thread_id: str) -> thread_pb2.Thread:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread


async def test_a_1000_message_thread_stays_within_a_small_budget(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(_route(Reply(text="numbered")))
    window = 1024
    budget = plan_budget(window)
    assistant_id = await _assistant(api, context_window=window)
    first = await api.send(content="Hello, let us talk for a long time.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(499):
        await api.send(
            content=f"Message {i}: tell me something about the number {i} and its neighbours.",
            thread_id=thread_id,
        )
    chats = [r.body for r in llm.requests if r.body and not _is_summary_request(r.body)]
    folds = [r.body for r in llm.requests if r.body and _is_summary_request(r.body)]
    assert len(chats) == 500
    assert all(_words(body) <= budget for body in chats), max(_words(b) for b in chats)
    # One summary call per fold, a fold per block of messages: not per message.
    assert 1 <= len(folds) <= 1000 / 8, len(folds)
    thread = await _thread(api, thread_id)
    assert thread.message_count == 1000
    assert thread.summary.text.startswith("Summary number")
    assert thread.summary.through_sequence > 0
    # The full history stays stored.
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    assert [m.sequence for m in page.messages] == list(range(1000))

    # Let any pending fold land, then check the shape of the next prompt.
    await asyncio.sleep(0.3)
    thread = await _thread(api, thread_id)
    llm.reset()
    llm.set_default(_route(Reply(text="numbered")))
    await api.send(content="What have we covered?", thread_id=thread_id)
    body = next(r.body for r in llm.requests if r.body and not _is_summary_request(r.body))
    system, *rest = body["messages"]
    assert system["role"] == "system"
    assert "<conversation_summary>" in system["content"]
    assert thread.summary.text in system["content"]
    assert rest[-1]["content"] == "What have we covered?"
    # The verbatim messages are the newest ones, in order, right after the summary.
    contents = [m["content"] for m in rest[:-1]]
    stored = [m.content for m in page.messages]
    assert contents == stored[len(stored) - len(contents) :]
    assert len(contents) >= 2


async def test_failing_summaries_fall_back_to_truncation(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(_route(Fail(status=500)))
    window = 1024
    assistant_id = await _assistant(api, context_window=window)
    first = await api.send(content="Start.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(60):
        events = await api.send(content=f"Long enough message number {i} " * 3, thread_id=thread_id)
        assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    chats = [r.body for r in llm.requests if r.body and not _is_summary_request(r.body)]
    assert all(_words(b) <= plan_budget(window) for b in chats)
    assert any(_is_summary_request(r.body or {}) for r in llm.requests)
    thread = await _thread(api, thread_id)
    assert not thread.HasField("summary")
    # The newest messages are still there, verbatim.
    assert chats[-1]["messages"][-1]["content"].startswith("Long enough message number 59")
    assert chats[-1]["messages"][-3]["content"].startswith("Long enough message number 58")


async def test_malformed_summary_is_not_stored(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(_route(Reply(text="   ")))
    assistant_id = await _assistant(api, context_window=1024)
    first = await api.send(content="Start.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(40):
        await api.send(content=f"Filler message {i} " * 4, thread_id=thread_id)
    assert any(_is_summary_request(r.body or {}) for r in llm.requests)
    assert not (await _thread(api, thread_id)).HasField("summary")


async def test_truncate_strategy_never_summarises(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(_route(Reply(text="numbered")))
    assistant_id = await _assistant(
        api,
        context_window=1024,
        context_strategy=assistant_pb2.CONTEXT_STRATEGY_TRUNCATE,
    )
    first = await api.send(content="Start.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(40):
        await api.send(content=f"Truncated thread message {i} " * 4, thread_id=thread_id)
    # (Other tests' folds may still be retrying on the shared server: look
    # only for summaries of this thread's messages.)
    assert not any(
        _is_summary_request(r.body or {}) and "Truncated thread" in str(r.body)
        for r in llm.requests
    )
    chats = [r.body for r in llm.requests if r.body and not _is_summary_request(r.body)]
    assert all(_words(b) <= plan_budget(1024) for b in chats)
    assert len(chats[-1]["messages"]) < 80


async def test_switching_to_a_smaller_model_mid_thread_keeps_state(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.set_default(_route(Reply(text="numbered")))
    first = await api.send(content="Remember: the code word is HELIOTROPE.", model="gpt-4o")
    thread_id = first[0].started.thread_id
    paragraph = "This is a long paragraph about the history of the city. " * 40
    for _ in range(20):
        await api.send(content=paragraph, thread_id=thread_id, model="gpt-4o")
    big = [r.body for r in llm.requests if r.body and not _is_summary_request(r.body)][-1]
    assert big["messages"][1]["content"] == "Remember: the code word is HELIOTROPE."
    assert COUNTER.count(" ".join(m["content"] for m in big["messages"])) > 8192

    llm.reset()
    llm.set_default(_route(Reply(text="numbered")))
    events = await api.send(content="What was the code word?", thread_id=thread_id, model="gpt-4")
    assert events[-1].completed.message.model == "gpt-4"
    body = next(r.body for r in llm.requests if r.body and not _is_summary_request(r.body))
    assert body["model"] == "gpt-4"
    assert COUNTER.count(" ".join(m["content"] for m in body["messages"])) <= plan_budget(8192)
    assert body["messages"][-1]["content"] == "What was the code word?"
    thread = await _thread(api, thread_id)
    assert thread.message_count == 44


async def test_restart_mid_fold_finishes_the_fold(loom: Loom, llm: ScriptedLLM) -> None:
    from datetime import UTC, datetime, timedelta

    from service.core.summaries import FOLD_JOB
    from service.store import connect
    from tests.conftest import make_settings, start_loom

    settings = make_settings(
        loom_ferretdb(loom), llm, mongodb_db="loom_restart_fold", job_lease_seconds=1.0
    )
    # First server: the fold's model call hangs; the server dies mid-fold.
    llm.set_default(_route(Reply(text="numbered")))
    first = await start_loom(settings)
    try:
        key = (await first.keys.create("fold-tenant")).secret
        async with aio.insecure_channel(f"127.0.0.1:{first.port}") as ch:
            a = Api(ch, key)
            assistant_id = await _assistant(a, context_window=1024)
            start = await a.send(content="Start.", assistant_id=assistant_id)
            thread_id = start[0].started.thread_id
            llm.set_default(_route(Hang()))
            jobs = first.store.db["jobs"]
            for i in range(60):
                await a.send(content=f"Restart filler message {i} " * 4, thread_id=thread_id)
                if await jobs.count_documents({"kind": FOLD_JOB}):
                    break
            assert await jobs.count_documents({"kind": FOLD_JOB}) == 1
            assert await eventually(
                lambda: any(
                    _is_summary_request(r.body or {}) and "Restart filler" in str(r.body)
                    for r in llm.requests
                )
            )
    finally:
        await first.stop(0)
    # As a crash would leave it: the job RUNNING, its claim held but expired.
    store = connect(settings.mongodb_uri.get_secret_value(), settings.mongodb_db)
    try:
        jobs = store.db["jobs"]
        job = await jobs.find_one({"kind": FOLD_JOB})
        assert job is not None
        assert job["state"] == "pending"  # a graceful stop hands it back
        stale = datetime.now(UTC) - timedelta(seconds=30)
        await jobs.update_one(
            {"_id": job["_id"]}, {"$set": {"state": "running", "update_time": stale}}
        )
        await store.db["leases"].insert_one(
            {
                "_id": f"job:{object_id(job['_id'])}",
                "tenant": "x",
                "owner": "dead",
                "expires": stale,
            }
        )
    finally:
        await store.close()

    # Second server on the same database: the fold is resumed and lands.
    llm.set_default(_route(Reply(text="numbered")))
    second = await start_loom(settings)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
            b = Api(ch, key)
            for _ in range(200):
                if (await _thread(b, thread_id)).HasField("summary"):
                    break
                await asyncio.sleep(0.05)
            thread = await _thread(b, thread_id)
            assert thread.summary.text.startswith("Summary number")
        # The job is recorded a moment after the summary it stored.
        for _ in range(200):
            done = await second.store.db["jobs"].find_one({"_id": job["_id"]})
            assert done is not None
            if done["state"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        assert done["state"] == "succeeded"
    finally:
        await second.stop(0)


def loom_ferretdb(loom: Loom) -> Any:
    """The FerretDB a running Loom uses, as the fixture object make_settings wants."""

    class _Uri:
        uri = loom.settings.mongodb_uri.get_secret_value()

    return _Uri()


async def test_get_thread_shows_the_summary_and_what_it_covers(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(_route(Reply(text="numbered")))
    assistant_id = await _assistant(api, context_window=1024)
    first = await api.send(content="Start.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(30):
        await api.send(content=f"Filler message {i} " * 4, thread_id=thread_id)

    async def has_summary() -> bool:
        return (await _thread(api, thread_id)).HasField("summary")

    for _ in range(100):
        if await has_summary():
            break
        await asyncio.sleep(0.05)
    thread = await _thread(api, thread_id)
    assert thread.summary.through_sequence >= 1
    assert thread.summary.model == "scripted-model"
    assert thread.summary.update_time.seconds > 0


async def test_context_window_is_validated(api: Api) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await _assistant(api, context_window=100)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context_window" in caught.value.details()
