"""Memory history against the real service: a contradicted memory is
invalidated and kept, never recalled; updates keep versions; the history
says which operation, thread and message made each change; deleting
forgets the history too."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import assistant_pb2, memory_pb2, thread_pb2
from service.memory.history import History
from service.memory.learning import EXTRACTION_JOB, Learning
from service.server import Loom
from tests.conftest import expect_error, new_tenant_key
from tests.scripted_llm import ScriptedLLM
from tests.test_memory import Mem, Model, _assistant, _recalled, _settled

V = memory_pb2


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


@pytest.fixture
def model(llm: ScriptedLLM) -> Model:
    route = Model()
    llm.set_default(route)
    return route


def _decide(rules: dict[str, dict[str, Any]]) -> Any:
    """A reconciliation answer: for each new fact containing a key, that action."""

    def decide(body: dict[str, Any]) -> str:
        ops = []
        for line in body["messages"][-1]["content"].splitlines():
            if line.startswith("New fact "):
                index = int(line.split()[2].rstrip(":"))
                for needle, op in rules.items():
                    if needle in line:
                        ops.append({"fact": index, **op})
        return json.dumps({"operations": ops})

    return decide


async def _list(api: Mem, assistant_id: str, **fields: Any) -> list[V.Memory]:
    page = await api.call(
        api.memory.ListMemories,
        V.ListMemoriesRequest(assistant_id=assistant_id, page_size=100, **fields),
    )
    return list(page.memories)


async def _search(api: Mem, assistant_id: str, query: str, **fields: Any) -> list[str]:
    found = await api.call(
        api.memory.SearchMemories,
        V.SearchMemoriesRequest(assistant_id=assistant_id, query=query, **fields),
    )
    return [r.memory.memory_id for r in found.results]


async def _history(api: Mem, assistant_id: str, memory_id: str, **fields: Any) -> Any:
    return await api.call(
        api.memory.ListMemoryHistory,
        V.ListMemoryHistoryRequest(assistant_id=assistant_id, memory_id=memory_id, **fields),
    )


async def _learn(api: Mem, assistant_id: str, said: str) -> tuple[Any, V.MemoryOperation]:
    events = await api.send(content=said, assistant_id=assistant_id, user_id="u")
    op = await _settled(api, events[-1].completed.memory_operation_id)
    assert op.state == V.MemoryOperation.STATE_SUCCEEDED, op.error
    return events, op


async def test_a_contradicted_memory_is_invalidated_kept_and_never_recalled(
    mem: Mem, model: Model
) -> None:
    assistant_id = await _assistant(mem)
    model.facts["Berlin"] = ["The user lives in Berlin."]
    first, op = await _learn(mem, assistant_id, "I live in Berlin.")
    [berlin] = op.added_memory_ids

    model.facts["Madrid"] = ["The user moved to Madrid."]
    model.reconcile = _decide({"Madrid": {"action": "replace", "memory_id": berlin}})
    moved, op = await _learn(mem, assistant_id, "I moved to Madrid.")
    [madrid] = op.added_memory_ids
    assert list(op.invalidated_memory_ids) == [berlin]
    assert list(op.deleted_memory_ids) == []

    old = (
        await mem.call(
            mem.memory.GetMemory, V.GetMemoryRequest(assistant_id=assistant_id, memory_id=berlin)
        )
    ).memory
    assert old.HasField("invalidate_time")
    assert old.superseded_by == madrid
    assert old.version == 2
    new = (
        await mem.call(
            mem.memory.GetMemory, V.GetMemoryRequest(assistant_id=assistant_id, memory_id=madrid)
        )
    ).memory
    assert new.supersedes == berlin
    assert not new.HasField("invalidate_time")

    # Kept, but out of lists, searches and recall unless asked for.
    assert berlin not in [m.memory_id for m in await _list(mem, assistant_id)]
    assert berlin in [m.memory_id for m in await _list(mem, assistant_id, include_invalidated=True)]
    assert berlin not in await _search(mem, assistant_id, "lives in Berlin", user_id="u")
    assert berlin in await _search(
        mem, assistant_id, "lives in Berlin", user_id="u", include_invalidated=True
    )
    events = await mem.send(
        content="Where does the user live, Berlin?", assistant_id=assistant_id, user_id="u"
    )
    assert "The user lives in Berlin." not in _recalled(events)
    assert "The user moved to Madrid." in _recalled(events)

    # The history says what replaced it, and which operation, thread and
    # message did.
    history = await _history(mem, assistant_id, berlin)
    created, retired = history.versions
    assert (created.version, created.change) == (1, V.MEMORY_CHANGE_CREATED)
    assert created.content == "The user lives in Berlin."
    assert created.thread_id == first[0].started.thread_id
    assert created.message_id == first[-1].completed.message.message_id
    assert created.operation_id == first[-1].completed.memory_operation_id
    assert (retired.version, retired.change) == (2, V.MEMORY_CHANGE_INVALIDATED)
    assert retired.superseded_by == madrid
    assert retired.operation_id == moved[-1].completed.memory_operation_id
    assert retired.thread_id == moved[0].started.thread_id
    assert retired.message_id == moved[-1].completed.message.message_id
    assert not history.next_page_token


async def test_an_update_by_extraction_keeps_the_previous_text_as_a_version(
    mem: Mem, model: Model
) -> None:
    assistant_id = await _assistant(mem)
    model.facts["like tea"] = ["The user likes tea."]
    _, op = await _learn(mem, assistant_id, "I like tea.")
    [tea] = op.added_memory_ids
    model.facts["favourite"] = ["The user likes green tea best."]
    model.reconcile = _decide(
        {
            "green tea best": {
                "action": "update",
                "memory_id": tea,
                "text": "The user likes tea, green tea best.",
            }
        }
    )
    refined, op = await _learn(mem, assistant_id, "Green is my favourite.")
    assert list(op.updated_memory_ids) == [tea]

    history = await _history(mem, assistant_id, tea)
    assert [(v.version, v.change, v.content) for v in history.versions] == [
        (1, V.MEMORY_CHANGE_CREATED, "The user likes tea."),
        (2, V.MEMORY_CHANGE_UPDATED, "The user likes tea, green tea best."),
    ]
    assert history.versions[1].operation_id == refined[-1].completed.memory_operation_id
    assert history.versions[1].thread_id == refined[0].started.thread_id
    # One version a page: the token walks them in order.
    page = await _history(mem, assistant_id, tea, page_size=1)
    assert [v.version for v in page.versions] == [1]
    page = await _history(mem, assistant_id, tea, page_size=1, page_token=page.next_page_token)
    assert [v.version for v in page.versions] == [2]
    assert not page.next_page_token


async def test_a_person_can_correct_and_restore_with_history(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    model.facts["called Rex"] = ["The user has a dog called Rex."]
    _, op = await _learn(mem, assistant_id, "I have a dog called Rex.")
    [rex] = op.added_memory_ids
    # A wrong extraction retires a right memory...
    model.facts["neighbour"] = ["The user has no dog."]
    model.reconcile = _decide({"no dog": {"action": "delete", "memory_id": rex}})
    _, op = await _learn(mem, assistant_id, "My neighbour has no dog.")
    assert list(op.invalidated_memory_ids) == [rex]
    assert list(op.added_memory_ids) == []
    # ...and a person restores it, then corrects its text.
    restored = await mem.call(
        mem.memory.UpdateMemory,
        V.UpdateMemoryRequest(
            memory=V.Memory(assistant_id=assistant_id, memory_id=rex),
            update_mask={"paths": ["invalidate_time"]},
        ),
    )
    assert not restored.memory.HasField("invalidate_time")
    assert rex in await _search(mem, assistant_id, "dog called Rex", user_id="u")
    await mem.call(
        mem.memory.UpdateMemory,
        V.UpdateMemoryRequest(
            memory=V.Memory(
                assistant_id=assistant_id, memory_id=rex, content="The user has a dog, Rex."
            )
        ),
    )
    history = await _history(mem, assistant_id, rex)
    assert [(v.version, v.change) for v in history.versions] == [
        (1, V.MEMORY_CHANGE_CREATED),
        (2, V.MEMORY_CHANGE_INVALIDATED),
        (3, V.MEMORY_CHANGE_RESTORED),
        (4, V.MEMORY_CHANGE_UPDATED),
    ]
    assert history.versions[3].operation_id == ""  # a person, through MemoryService
    assert history.versions[3].content == "The user has a dog, Rex."
    # Invalidating is extraction's alone.
    await expect_error(
        mem.call(
            mem.memory.UpdateMemory,
            V.UpdateMemoryRequest(
                memory=V.Memory(
                    assistant_id=assistant_id, memory_id=rex, invalidate_time={"seconds": 1}
                ),
                update_mask={"paths": ["invalidate_time"]},
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_deletes_forget_the_history_too(mem: Mem, model: Model, loom: Loom) -> None:
    history = loom.store.memory_history
    tenant = (await loom.keys.authenticate(mem.key)).tenant
    assistant_id = await _assistant(mem)
    made = []
    for n in range(3):
        created = await mem.call(
            mem.memory.CreateMemory,
            V.CreateMemoryRequest(
                memory=V.Memory(assistant_id=assistant_id, content=f"Fact {n}, first.")
            ),
        )
        made.append(created.memory.memory_id)
        await mem.call(
            mem.memory.UpdateMemory,
            V.UpdateMemoryRequest(
                memory=V.Memory(
                    assistant_id=assistant_id, memory_id=made[-1], content=f"Fact {n}, second."
                )
            ),
        )
        assert len(await history.versions(tenant, assistant_id, made[-1])) == 1

    await mem.call(
        mem.memory.DeleteMemory, V.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=made[0])
    )
    assert await history.versions(tenant, assistant_id, made[0]) == []
    await expect_error(
        _history(mem, assistant_id, made[0]), grpc.StatusCode.NOT_FOUND, "MEMORY_NOT_FOUND"
    )
    assert len(await history.versions(tenant, assistant_id, made[1])) == 1

    # A thread's learnt memories go with their history when it is deleted so.
    model.facts["Lisbon"] = ["The user lives in Lisbon."]
    model.facts["Porto"] = ["The user lives in Porto."]
    events, op = await _learn(mem, assistant_id, "I live in Lisbon.")
    [lisbon] = op.added_memory_ids
    model.reconcile = _decide(
        {"Porto": {"action": "update", "memory_id": lisbon, "text": "The user lives in Porto."}}
    )
    await _learn(mem, assistant_id, "Actually I live in Porto.")
    assert len(await history.versions(tenant, assistant_id, lisbon)) == 1
    await mem.call(
        mem.threads.DeleteThread,
        thread_pb2.DeleteThreadRequest(thread_id=events[0].started.thread_id, delete_memories=True),
    )
    assert await history.versions(tenant, assistant_id, lisbon) == []
    assert lisbon not in [m.memory_id for m in await _list(mem, assistant_id)]

    await mem.call(
        mem.assistants.DeleteAssistant,
        assistant_pb2.DeleteAssistantRequest(assistant_id=assistant_id),
    )
    assert await history.versions(tenant, assistant_id, made[1]) == []
    assert await history.versions(tenant, assistant_id, made[2]) == []


async def test_a_retried_extraction_changes_nothing_twice(
    mem: Mem, model: Model, loom: Loom
) -> None:
    assistant_id = await _assistant(mem)
    model.facts["Oslo"] = ["The user lives in Oslo."]
    _, op = await _learn(mem, assistant_id, "I live in Oslo.")
    [oslo] = op.added_memory_ids
    model.facts["Bergen"] = ["The user moved to Bergen."]
    model.reconcile = _decide({"Bergen": {"action": "replace", "memory_id": oslo}})
    _, op = await _learn(mem, assistant_id, "I moved to Bergen.")

    # Run the finished job's body again, as a retry after a crash would.
    tenant = (await loom.keys.authenticate(mem.key)).tenant
    job = await loom.store.jobs.get(tenant, op.operation_id)
    assert job is not None
    assert job.kind == EXTRACTION_JOB
    learning = Learning(
        index=loom.memory_index,
        history=History(loom.memory_index, loom.store.memory_history),
        messages=loom.store.messages,
        llm=loom.llm,
    )

    async def keep(values: dict[str, Any]) -> None:
        job.checkpoint.update(values)

    again = await learning.run(job, keep)
    assert again["added"] == list(op.added_memory_ids)
    assert again["invalidated"] == [oslo]
    history = await _history(mem, assistant_id, oslo)
    assert [v.version for v in history.versions] == [1, 2]
