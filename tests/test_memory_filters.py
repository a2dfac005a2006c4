"""ListMemories and SearchMemories filters (the AIP-160 subset) against the
real service (the parser's own cases: tests/test_filtering.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import memory_pb2
from service.server import Loom
from tests.conftest import error_info, expect_error, new_tenant_key
from tests.scripted_llm import ScriptedLLM
from tests.test_memory import Mem, Model, _assistant, _settled

V = memory_pb2


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


@pytest.fixture
def model(llm: ScriptedLLM) -> Model:
    route = Model()
    llm.set_default(route)
    return route


async def _create(api: Mem, assistant_id: str, content: str, **metadata: str) -> str:
    created = await api.call(
        api.memory.CreateMemory,
        V.CreateMemoryRequest(
            memory=V.Memory(assistant_id=assistant_id, content=content, metadata=metadata)
        ),
    )
    return str(created.memory.memory_id)


async def _listed(api: Mem, assistant_id: str, where: str, **fields: Any) -> list[str]:
    out: list[str] = []
    token = ""
    while True:
        page = await api.call(
            api.memory.ListMemories,
            V.ListMemoriesRequest(
                assistant_id=assistant_id, filter=where, page_size=2, page_token=token, **fields
            ),
        )
        out += [m.memory_id for m in page.memories]
        token = page.next_page_token
        if not token:
            return out


async def _found(api: Mem, assistant_id: str, query: str, where: str, **fields: Any) -> list[str]:
    found = await api.call(
        api.memory.SearchMemories,
        V.SearchMemoriesRequest(assistant_id=assistant_id, query=query, filter=where, **fields),
    )
    return [r.memory.memory_id for r in found.results]


async def test_filters_on_kind_metadata_and_create_time(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    crm = [
        await _create(mem, assistant_id, f"Order {n} shipped late.", source="crm") for n in (1, 2)
    ]
    web = await _create(mem, assistant_id, "Order 3 shipped late.", source="web")
    await asyncio.sleep(0.01)
    between = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await asyncio.sleep(0.01)
    late = await _create(mem, assistant_id, "Order 4 shipped late.", source="crm", team="eu")
    model.facts["parcel"] = ["The user's parcel went to the wrong address."]
    events = await mem.send(
        content="My parcel went to the wrong address.", assistant_id=assistant_id, user_id="u"
    )
    op = await _settled(mem, events[-1].completed.memory_operation_id)
    [fact] = op.added_memory_ids

    assert await _listed(mem, assistant_id, 'metadata.source = "crm"') == [*crm, late]
    assert await _listed(mem, assistant_id, "metadata.source != crm AND kind = MANUAL") == [web]
    after = f'create_time > "{between}" AND kind != EPISODIC'
    assert await _listed(mem, assistant_id, after, user_id="u") == [fact]
    assert await _listed(mem, assistant_id, f'kind = MANUAL AND create_time > "{between}"') == [
        late
    ]
    assert await _listed(mem, assistant_id, "kind = MEMORY_KIND_FACT") == [fact]
    assert len(await _listed(mem, assistant_id, "kind = episodic")) == 1
    assert await _listed(mem, assistant_id, "metadata.team = eu") == [late]
    assert await _listed(mem, assistant_id, f'create_time <= "{between}"') == [*crm, web]

    # A search ranks the matching memories only, however well others match.
    assert set(
        await _found(mem, assistant_id, "Order 3 shipped late", "metadata.source = crm")
    ) == {
        *crm,
        late,
    }
    assert await _found(mem, assistant_id, "wrong address parcel", "kind = FACT", user_id="u") == [
        fact
    ]
    assert await _found(mem, assistant_id, "wrong address parcel", "kind = FACT") == []
    assert await _found(
        mem, assistant_id, "shipped", f'create_time > "{between}" AND metadata.source = crm'
    ) == [late]


async def test_a_page_token_is_tied_to_its_filter(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    for n in range(3):
        await _create(mem, assistant_id, f"Note {n}.", source="crm")
    first = await mem.call(
        mem.memory.ListMemories,
        V.ListMemoriesRequest(
            assistant_id=assistant_id, filter="metadata.source = crm", page_size=1
        ),
    )
    assert first.next_page_token
    error = await expect_error(
        mem.call(
            mem.memory.ListMemories,
            V.ListMemoriesRequest(
                assistant_id=assistant_id,
                filter="metadata.source = web",
                page_size=1,
                page_token=first.next_page_token,
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(error)["field"] == "page_token"
    # The same filter written differently is the same filter.
    rest = await mem.call(
        mem.memory.ListMemories,
        V.ListMemoriesRequest(
            assistant_id=assistant_id,
            filter="metadata.source='crm'",
            page_size=5,
            page_token=first.next_page_token,
        ),
    )
    assert len(rest.memories) == 2


async def test_bad_filters_are_invalid_argument_through_the_api(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    for call in (
        mem.call(
            mem.memory.ListMemories,
            V.ListMemoriesRequest(assistant_id=assistant_id, filter="kind = FACT OR x = 1"),
        ),
        mem.call(
            mem.memory.SearchMemories,
            V.SearchMemoriesRequest(assistant_id=assistant_id, query="q", filter="kind ~ FACT"),
        ),
    ):
        error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
        assert error_info(error)["field"] == "filter"
        assert "at character" in error.details()
