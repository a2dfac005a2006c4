"""Assistant memory end to end: the real service, real Chroma (embedded and
server), real FerretDB, and the scripted model extracting facts."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio

from generated.loom.v1 import assistant_pb2, common_pb2, memory_pb2, memory_pb2_grpc, thread_pb2
from service.memory.extraction import (
    Candidate,
    fallback_operations,
    parse_facts,
    parse_operations,
)
from service.server import Loom
from tests.conftest import (
    Api,
    error_info,
    expect_error,
    make_settings,
    new_tenant_key,
    start_loom,
)
from tests.scripted_llm import Hang, Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB, free_port
from tests.support.process import grpcurl_bin, json_objects

EXTRACT_MARK = "From the exchange below"
RECONCILE_MARK = "For each new fact"


class Mem(Api):
    """Api plus the MemoryService stub."""

    def __init__(self, channel: aio.Channel, key: str | None) -> None:
        super().__init__(channel, key)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


def _system(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""


class Model:
    """Routes the scripted model: chat replies, fact extraction, reconciliation."""

    def __init__(self) -> None:
        self.facts: dict[str, list[str]] = {}  # user message -> facts to extract
        self.extract_raw: str | None = None  # a fixed (maybe malformed) extraction answer
        self.reconcile: Any = None  # callable(body) -> raw answer, or None for "all add"
        self.hang_extraction = False

    def __call__(self, body: dict[str, Any]) -> Reply | Hang:
        system = _system(body)
        if EXTRACT_MARK in system:
            if self.hang_extraction:
                return Hang()
            if self.extract_raw is not None:
                return Reply(text=self.extract_raw)
            exchange = body["messages"][-1]["content"]
            for said, facts in self.facts.items():
                if said in exchange:
                    return Reply(text=json.dumps({"facts": facts}))
            return Reply(text='{"facts": []}')
        if RECONCILE_MARK in system:
            if self.reconcile is not None:
                return Reply(text=self.reconcile(body))
            return Reply(text='{"operations": []}')
        return Reply(text="Noted.")


@pytest.fixture
def model(llm: ScriptedLLM) -> Model:
    route = Model()
    llm.set_default(route)
    return route


def _chats(llm: ScriptedLLM) -> list[dict[str, Any]]:
    return [
        r.body
        for r in llm.requests
        if r.body and EXTRACT_MARK not in _system(r.body) and RECONCILE_MARK not in _system(r.body)
    ]


async def _assistant(api: Api, memory: int = common_pb2.MEMORY_MODE_AUTO) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Chef", instructions="You suggest recipes.", memory_mode=memory
            )
        ),
    )
    return str(created.assistant.assistant_id)


async def _settled(api: Mem, operation_id: str) -> memory_pb2.MemoryOperation:
    assert operation_id.startswith("memop_")
    for _ in range(300):
        got = await api.call(
            api.memory.GetMemoryOperation,
            memory_pb2.GetMemoryOperationRequest(operation_id=operation_id),
        )
        op = got.operation
        if op.state in (
            memory_pb2.MemoryOperation.STATE_SUCCEEDED,
            memory_pb2.MemoryOperation.STATE_FAILED,
        ):
            return op
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {operation_id} never finished")


async def _memories(api: Mem, assistant_id: str, user_id: str = "") -> list[memory_pb2.Memory]:
    page = await api.call(
        api.memory.ListMemories,
        memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, user_id=user_id, page_size=100),
    )
    return list(page.memories)


def _recalled(events: list[thread_pb2.SendMessageResponse]) -> list[str]:
    return [m.content for e in events if e.HasField("memory") for m in e.memory.memories]


async def test_seed_scenario_assistant_remembers_across_threads(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["allergic to peanuts"] = ["The user is allergic to peanuts."]
    assistant_id = await _assistant(mem)
    first = await mem.send(
        content="I'm allergic to peanuts.", assistant_id=assistant_id, user_id="u1"
    )
    done = first[-1].completed
    op = await _settled(mem, done.memory_operation_id)
    assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
    assert len(op.added_memory_ids) == 1
    assert op.thread_id == first[0].started.thread_id
    assert op.message_id == done.message.message_id

    llm.reset()
    llm.set_default(model)
    second = await mem.send(
        content="Any dietary restrictions you remember?", assistant_id=assistant_id, user_id="u1"
    )
    assert second[0].started.thread_created
    recalled = _recalled(second)
    assert "The user is allergic to peanuts." in recalled
    # Sent after `started`, before the first delta.
    kinds = [e.WhichOneof("event") for e in second]
    assert kinds.index("memory") == 1
    assert kinds.index("delta") > 1
    system = _system(_chats(llm)[0])
    assert "allergic to peanuts" in system
    assert "<remembered_facts>" in system
    assert "not instructions" in system


async def test_episodic_write_is_readable_by_the_very_next_request(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    model.hang_extraction = True  # no facts yet: only the episodic layer can answer
    assistant_id = await _assistant(mem)
    await mem.send(content="My cat is called Miso.", assistant_id=assistant_id, user_id="u1")
    events = await mem.send(
        content="What is my cat called?", assistant_id=assistant_id, user_id="u1"
    )
    assert "My cat is called Miso." in _recalled(events)


async def test_users_of_one_assistant_never_see_each_others_memories(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["allergic to shellfish"] = ["The user is allergic to shellfish."]
    model.facts["vegetarian"] = ["The user is vegetarian."]
    assistant_id = await _assistant(mem)
    a = await mem.send(
        content="I'm allergic to shellfish.", assistant_id=assistant_id, user_id="ann"
    )
    b = await mem.send(content="I'm vegetarian.", assistant_id=assistant_id, user_id="bob")
    await _settled(mem, a[-1].completed.memory_operation_id)
    await _settled(mem, b[-1].completed.memory_operation_id)
    shared = await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, content="The restaurant is closed on Mondays."
            )
        ),
    )
    assert shared.memory.kind == memory_pb2.MEMORY_KIND_MANUAL
    assert shared.memory.user_id == ""

    for user, mine, theirs in (
        ("ann", "shellfish", "vegetarian"),
        ("bob", "vegetarian", "shellfish"),
    ):
        events = await mem.send(
            content="What should I avoid eating? Are you open on Mondays?",
            assistant_id=assistant_id,
            user_id=user,
        )
        recalled = " ".join(_recalled(events))
        assert mine in recalled
        assert theirs not in recalled
        assert "closed on Mondays" in recalled
        found = await mem.call(
            mem.memory.SearchMemories,
            memory_pb2.SearchMemoriesRequest(
                assistant_id=assistant_id, query="allergic vegetarian food", user_id=user
            ),
        )
        texts = " ".join(r.memory.content for r in found.results)
        assert theirs not in texts
        assert all(r.memory.user_id in (user, "") for r in found.results)
    # A thread without a user sees only assistant-wide memories.
    anonymous = await mem.send(
        content="What should I avoid eating? Are you open on Mondays?", assistant_id=assistant_id
    )
    recalled = " ".join(_recalled(anonymous))
    assert "shellfish" not in recalled
    assert "vegetarian" not in recalled
    assert "closed on Mondays" in recalled
    listed = await _memories(mem, assistant_id, "ann")
    assert {m.user_id for m in listed} == {"ann"}


async def test_readonly_recalls_but_writes_nothing(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["sister"] = ["The user has a sister called Eva."]
    assistant_id = await _assistant(mem, memory=common_pb2.MEMORY_MODE_READONLY)
    await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, user_id="u1", content="The user lives in Porto."
            )
        ),
    )
    events = await mem.send(
        content="My sister is called Eva. Where do I live?", assistant_id=assistant_id, user_id="u1"
    )
    assert events[-1].completed.memory_operation_id == ""
    assert "The user lives in Porto." in _recalled(events)
    assert [m.content for m in await _memories(mem, assistant_id)] == ["The user lives in Porto."]
    # (Other tests' jobs may still be running on the shared server.)
    assert not any(
        EXTRACT_MARK in _system(r.body or {}) and "Eva" in json.dumps(r.body) for r in llm.requests
    )


async def test_off_neither_recalls_nor_writes(mem: Mem, model: Model, llm: ScriptedLLM) -> None:
    assistant_id = await _assistant(mem)  # AUTO by default...
    await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(assistant_id=assistant_id, content="Secret: the code is 42.")
        ),
    )
    llm.reset()
    llm.set_default(model)
    events = await mem.send(  # ...but OFF for this message
        content="What is the code?",
        assistant_id=assistant_id,
        memory=common_pb2.MEMORY_MODE_OFF,
    )
    assert not any(e.HasField("memory") for e in events)
    assert events[-1].completed.memory_operation_id == ""
    assert events[-1].completed.message.memory == common_pb2.MEMORY_MODE_OFF
    assert "42" not in json.dumps(_chats(llm)[0])
    assert len(await _memories(mem, assistant_id)) == 1


async def test_default_memory_mode_is_off(mem: Mem, model: Model, llm: ScriptedLLM) -> None:
    assistant_id = await _assistant(mem, memory=common_pb2.MEMORY_MODE_UNSPECIFIED)
    events = await mem.send(content="I love jazz.", assistant_id=assistant_id, user_id="u")
    assert events[-1].completed.message.memory == common_pb2.MEMORY_MODE_OFF
    assert await _memories(mem, assistant_id) == []


async def test_deleted_memories_are_never_recalled_or_returned(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(mem)
    created = await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, user_id="u1", content="The user's PIN is 1234."
            )
        ),
    )
    memory_id = created.memory.memory_id
    await mem.call(
        mem.memory.DeleteMemory,
        memory_pb2.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=memory_id),
    )
    await expect_error(
        mem.call(
            mem.memory.GetMemory,
            memory_pb2.GetMemoryRequest(assistant_id=assistant_id, memory_id=memory_id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "MEMORY_NOT_FOUND",
    )
    found = await mem.call(
        mem.memory.SearchMemories,
        memory_pb2.SearchMemoriesRequest(assistant_id=assistant_id, query="PIN 1234", user_id="u1"),
    )
    assert memory_id not in [r.memory.memory_id for r in found.results]
    events = await mem.send(content="What is my PIN 1234?", assistant_id=assistant_id, user_id="u2")
    assert "1234" not in " ".join(
        m for m in _recalled(events) if "PIN" in m and "What is my" not in m
    )
    assert await _memories(mem, assistant_id, "u1") == []


async def test_delete_thread_can_take_its_memories_and_delete_assistant_takes_all(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["Lisbon"] = ["The user lives in Lisbon."]
    assistant_id = await _assistant(mem)
    kept = await mem.send(content="I work as a nurse.", assistant_id=assistant_id, user_id="u")
    gone = await mem.send(content="I live in Lisbon.", assistant_id=assistant_id, user_id="u")
    await _settled(mem, gone[-1].completed.memory_operation_id)
    await _settled(mem, kept[-1].completed.memory_operation_id)
    before = await _memories(mem, assistant_id)
    gone_thread = gone[0].started.thread_id
    assert any(
        m.source_thread_id == gone_thread and m.kind == memory_pb2.MEMORY_KIND_FACT for m in before
    )
    await mem.call(
        mem.threads.DeleteThread,
        thread_pb2.DeleteThreadRequest(thread_id=gone_thread, delete_memories=True),
    )
    after = await _memories(mem, assistant_id)
    assert after
    assert all(m.source_thread_id != gone_thread for m in after)
    assert any("nurse" in m.content for m in after)
    # Without the option, a thread's memories outlive it.
    await mem.call(
        mem.threads.DeleteThread,
        thread_pb2.DeleteThreadRequest(thread_id=kept[0].started.thread_id),
    )
    assert any("nurse" in m.content for m in await _memories(mem, assistant_id))

    await mem.call(
        mem.assistants.DeleteAssistant,
        assistant_pb2.DeleteAssistantRequest(assistant_id=assistant_id),
    )
    await expect_error(
        mem.call(
            mem.memory.ListMemories, memory_pb2.ListMemoriesRequest(assistant_id=assistant_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_duplicates_merge_and_contradictions_update(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(mem)
    model.facts["Berlin"] = ["The user lives in Berlin."]
    first = await mem.send(content="I live in Berlin.", assistant_id=assistant_id, user_id="u")
    op = await _settled(mem, first[-1].completed.memory_operation_id)
    [berlin_id] = op.added_memory_ids

    def decide(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        ops = []
        for line in text.splitlines():
            if line.startswith("New fact "):
                index = int(line.split()[2].rstrip(":"))
                if "still lives in Berlin" in line:
                    ops.append({"fact": index, "action": "none"})
                elif "Madrid" in line:
                    ops.append(
                        {
                            "fact": index,
                            "action": "update",
                            "memory_id": berlin_id,
                            "text": "The user lives in Madrid (moved from Berlin).",
                        }
                    )
        return json.dumps({"operations": ops})

    model.reconcile = decide
    model.facts["still"] = ["The user still lives in Berlin."]
    again = await mem.send(
        content="I still live in Berlin.", assistant_id=assistant_id, user_id="u"
    )
    op = await _settled(mem, again[-1].completed.memory_operation_id)
    assert list(op.added_memory_ids) == []
    assert list(op.updated_memory_ids) == []

    model.facts["Madrid"] = ["The user moved to Madrid."]
    moved = await mem.send(content="I moved to Madrid.", assistant_id=assistant_id, user_id="u")
    op = await _settled(mem, moved[-1].completed.memory_operation_id)
    assert list(op.updated_memory_ids) == [berlin_id]
    facts = [m for m in await _memories(mem, assistant_id) if m.kind == memory_pb2.MEMORY_KIND_FACT]
    assert [m.content for m in facts] == ["The user lives in Madrid (moved from Berlin)."]


async def test_malformed_model_output_is_skipped_not_fatal(
    mem: Mem, model: Model, llm: ScriptedLLM
) -> None:
    assistant_id = await _assistant(mem)
    model.extract_raw = "Sure! Here are the facts: peanuts, maybe?"
    events = await mem.send(content="I hate peanuts.", assistant_id=assistant_id, user_id="u")
    op = await _settled(mem, events[-1].completed.memory_operation_id)
    assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
    assert list(op.added_memory_ids) == []
    # The episodic layer still has the message, and the service still answers.
    contents = [m.content for m in await _memories(mem, assistant_id)]
    assert contents == ["I hate peanuts."]
    again = await mem.send(content="Hello again", assistant_id=assistant_id, user_id="u")
    assert again[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE


def test_parsing_model_output_is_strict() -> None:
    assert parse_facts('{"facts": ["A.", "A.", " B. "]}') == ["A.", "B."]
    assert parse_facts('```json\n{"facts": ["C."]}\n```') == ["C."]
    assert parse_facts("no json here") is None
    assert parse_facts('{"facts": [1, 2]}') is None
    candidates = [
        Candidate("The user likes tea.", [("mem_a", "The user likes tea.", 0.97)]),
        Candidate("The user has a dog.", []),
    ]
    # A memory id the model was not shown is refused outright.
    assert (
        parse_operations(
            '{"operations": [{"fact": 0, "action": "delete", "memory_id": "mem_other"}]}',
            candidates,
        )
        is None
    )
    ops = parse_operations('{"operations": [{"fact": 1, "action": "add"}]}', candidates)
    assert ops is not None
    assert [(o.fact, o.action) for o in ops] == [(0, "none"), (1, "add")]
    assert [o.action for o in fallback_operations(candidates)] == ["none", "add"]


async def test_restart_mid_extraction_finishes_the_job(
    ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    route = Model()
    route.facts["Rex"] = ["The user has a dog called Rex."]
    route.hang_extraction = True
    llm.set_default(route)
    settings = make_settings(ferretdb, llm, mongodb_db="loom_restart_memory", llm_timeout=30.0)
    first = await start_loom(settings)
    key = await new_tenant_key(first)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{first.port}") as ch:
            api = Mem(ch, key)
            assistant_id = await _assistant(api)
            events = await api.send(
                content="I have a dog called Rex.", assistant_id=assistant_id, user_id="u"
            )
            operation_id = events[-1].completed.memory_operation_id
            for _ in range(100):  # the job is running (its model call hangs)
                if any(EXTRACT_MARK in _system(r.body or {}) for r in llm.requests):
                    break
                await asyncio.sleep(0.05)
    finally:
        await first.stop(0)
    route.hang_extraction = False
    second = await start_loom(settings)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{second.port}") as ch:
            api = Mem(ch, key)
            op = await _settled(api, operation_id)
            assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
            assert len(op.added_memory_ids) == 1
            facts = [m.content for m in await _memories(api, assistant_id)]
            assert "The user has a dog called Rex." in facts
    finally:
        await second.stop(0)


async def test_memory_is_isolated_between_tenants(
    mem: Mem, model: Model, loom: Loom, channel: aio.Channel
) -> None:
    assistant_id = await _assistant(mem)
    created = await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(assistant_id=assistant_id, content="Tenant A's secret.")
        ),
    )
    other = Mem(channel, await new_tenant_key(loom))
    memory_id = created.memory.memory_id
    calls = [
        other.call(
            other.memory.GetMemory,
            memory_pb2.GetMemoryRequest(assistant_id=assistant_id, memory_id=memory_id),
        ),
        other.call(
            other.memory.ListMemories, memory_pb2.ListMemoriesRequest(assistant_id=assistant_id)
        ),
        other.call(
            other.memory.SearchMemories,
            memory_pb2.SearchMemoriesRequest(assistant_id=assistant_id, query="secret"),
        ),
        other.call(
            other.memory.DeleteMemory,
            memory_pb2.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=memory_id),
        ),
        other.call(
            other.memory.CreateMemory,
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(assistant_id=assistant_id, content="injected")
            ),
        ),
    ]
    for call in calls:
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "ASSISTANT_NOT_FOUND")
    assert [m.content for m in await _memories(mem, assistant_id)] == ["Tenant A's secret."]
    await expect_error(
        other.call(
            other.memory.GetMemoryOperation,
            memory_pb2.GetMemoryOperationRequest(operation_id="memop_" + "0" * 24),
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_memory_api_validates_input(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    bad = [
        (memory_pb2.Memory(assistant_id=assistant_id, content="   "), "memory.content"),
        (memory_pb2.Memory(assistant_id=assistant_id, content="x" * 4001), "memory.content"),
        (memory_pb2.Memory(assistant_id="asst_bad", content="ok"), "assistant_id"),
    ]
    for memory, field in bad:
        error = await expect_error(
            mem.call(mem.memory.CreateMemory, memory_pb2.CreateMemoryRequest(memory=memory)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert field in error.details() or field.split(".")[-1] in error.details()
    await expect_error(
        mem.call(
            mem.memory.SearchMemories,
            memory_pb2.SearchMemoriesRequest(assistant_id=assistant_id, query=""),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        mem.call(
            mem.memory.ListMemories,
            memory_pb2.ListMemoriesRequest(
                assistant_id=assistant_id, user_id="u", assistant_wide_only=True
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await _memories(mem, assistant_id) == []


async def test_update_memory_and_paginate(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    ids = []
    for i in range(7):
        created = await mem.call(
            mem.memory.CreateMemory,
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(assistant_id=assistant_id, content=f"Fact number {i}.")
            ),
        )
        ids.append(created.memory.memory_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await mem.call(
            mem.memory.ListMemories,
            memory_pb2.ListMemoriesRequest(
                assistant_id=assistant_id, page_size=3, page_token=token
            ),
        )
        seen.extend(m.memory_id for m in page.memories)
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    updated = await mem.call(
        mem.memory.UpdateMemory,
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, memory_id=ids[0], content="Fact zero, corrected."
            )
        ),
    )
    assert updated.memory.content == "Fact zero, corrected."
    found = await mem.call(
        mem.memory.SearchMemories,
        memory_pb2.SearchMemoriesRequest(assistant_id=assistant_id, query="zero corrected"),
    )
    assert found.results[0].memory.memory_id == ids[0]


async def _update_memory(
    mem: Mem, memory: memory_pb2.Memory, paths: list[str]
) -> memory_pb2.UpdateMemoryResponse:
    request = memory_pb2.UpdateMemoryRequest(memory=memory)
    request.update_mask.CopyFrom(field_mask_pb2.FieldMask(paths=paths))
    response: memory_pb2.UpdateMemoryResponse = await mem.call(mem.memory.UpdateMemory, request)
    return response


async def _tagged_memory(mem: Mem, metadata: dict[str, str] | None = None) -> memory_pb2.Memory:
    assistant_id = await _assistant(mem)
    created = await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, content="Likes tea.", metadata=metadata or {}
            )
        ),
    )
    return created.memory


async def _stored(mem: Mem, memory: memory_pb2.Memory) -> memory_pb2.Memory:
    got = await mem.call(
        mem.memory.GetMemory,
        memory_pb2.GetMemoryRequest(assistant_id=memory.assistant_id, memory_id=memory.memory_id),
    )
    return got.memory


async def test_update_memory_star_alone_replaces_every_field(mem: Mem, model: Model) -> None:
    original = await _tagged_memory(mem)
    replaced = await _update_memory(
        mem,
        memory_pb2.Memory(
            assistant_id=original.assistant_id,
            memory_id=original.memory_id,
            content="Likes green tea.",
            metadata={"drink": "tea"},
        ),
        ["*"],
    )
    assert replaced.memory.content == "Likes green tea."
    assert dict(replaced.memory.metadata) == {"drink": "tea"}
    assert await _stored(mem, original) == replaced.memory
    # AIP-134: '*' is a full replacement, so a field left unset is cleared.
    cleared = await _update_memory(
        mem,
        memory_pb2.Memory(
            assistant_id=original.assistant_id, memory_id=original.memory_id, content="Tea."
        ),
        ["*"],
    )
    assert dict(cleared.memory.metadata) == {}


@pytest.mark.parametrize("paths", [["*"], ["metadata"]])
async def test_update_memory_removes_the_metadata_keys_it_leaves_out(
    mem: Mem, model: Model, paths: list[str]
) -> None:
    original = await _tagged_memory(mem, {"k": "v", "keep": "1"})
    updated = await _update_memory(
        mem,
        memory_pb2.Memory(
            assistant_id=original.assistant_id,
            memory_id=original.memory_id,
            content=original.content,
            metadata={"keep": "1"},
        ),
        paths,
    )
    assert dict(updated.memory.metadata) == {"keep": "1"}
    assert dict((await _stored(mem, original)).metadata) == {"keep": "1"}


@pytest.mark.parametrize(
    "paths", [["*", "content"], ["metadata", "*"], ["text"], ["user_id"], ["content", "kind"]]
)
async def test_update_memory_with_a_bad_mask_is_refused_and_changes_nothing(
    mem: Mem, model: Model, paths: list[str]
) -> None:
    original = await _tagged_memory(mem)
    error = await expect_error(
        _update_memory(
            mem,
            memory_pb2.Memory(
                assistant_id=original.assistant_id,
                memory_id=original.memory_id,
                content="Changed.",
            ),
            paths,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "update_mask"
    if "*" in paths:
        assert "'*' alone" in (error.details() or "")
    assert await _stored(mem, original) == original


@pytest.fixture(scope="session")
def chroma_server() -> Iterator[str]:
    folder = tempfile.mkdtemp(prefix="loom-chroma-")
    port = free_port()
    proc = subprocess.Popen(
        [
            shutil.which("chroma") or ".venv/bin/chroma",
            "run",
            "--path",
            folder,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import urllib.request

    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("chroma run exited") from None
                import time

                time.sleep(0.1)
        else:
            raise RuntimeError("chroma server did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def chroma_loom(
    ferretdb: FerretDB, llm: ScriptedLLM, chroma_server: str
) -> AsyncIterator[Loom]:
    server = await start_loom(
        make_settings(ferretdb, llm, mongodb_db="loom_chroma_server", chroma_url=chroma_server)
    )
    yield server
    await server.stop(0)


async def test_seed_scenario_with_a_chroma_server_through_grpcurl(
    chroma_loom: Loom, model: Model, llm: ScriptedLLM
) -> None:
    model.facts["peanuts"] = ["The user is allergic to peanuts."]
    key = await new_tenant_key(chroma_loom)
    address = f"127.0.0.1:{chroma_loom.port}"

    async def grpcurl(method: str, body: dict[str, Any]) -> list[Any]:
        proc = await asyncio.create_subprocess_exec(
            grpcurl_bin(),
            "-plaintext",
            "-H",
            f"x-api-key: {key}",
            "-d",
            json.dumps(body),
            address,
            method,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return json_objects(out.decode())

    [created] = await grpcurl(
        "loom.v1.AssistantService/CreateAssistant",
        {"assistant": {"name": "Chef", "memory_mode": "MEMORY_MODE_AUTO"}},
    )
    assistant_id = created["assistant"]["assistant_id"]
    events = await grpcurl(
        "loom.v1.ThreadService/SendMessage",
        {"content": "I'm allergic to peanuts.", "assistant_id": assistant_id, "user_id": "u1"},
    )
    operation_id = events[-1]["completed"]["memory_operation_id"]
    for _ in range(200):
        [got] = await grpcurl(
            "loom.v1.MemoryService/GetMemoryOperation", {"operation_id": operation_id}
        )
        if got["operation"]["state"] == "STATE_SUCCEEDED":
            break
        await asyncio.sleep(0.05)
    assert got["operation"]["state"] == "STATE_SUCCEEDED"
    events = await grpcurl(
        "loom.v1.ThreadService/SendMessage",
        {
            "content": "Any dietary restrictions you remember?",
            "assistant_id": assistant_id,
            "user_id": "u1",
        },
    )
    recalled = [m["content"] for e in events if "memory" in e for m in e["memory"]["memories"]]
    assert "The user is allergic to peanuts." in recalled
