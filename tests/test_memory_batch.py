"""BatchCreateMemories against the real service: order, all or none,
request_id replays, and sequences indexed with their neighbours."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import memory_pb2
from service.server import Loom
from tests.conftest import error_info, expect_error, new_tenant_key
from tests.scripted_llm import ScriptedLLM
from tests.test_memory import Mem, Model, _assistant

V = memory_pb2


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


@pytest.fixture
def model(llm: ScriptedLLM) -> Model:
    route = Model()
    llm.set_default(route)
    return route


def _batch(assistant_id: str, texts: list[str], **fields: object) -> V.BatchCreateMemoriesRequest:
    return V.BatchCreateMemoriesRequest(
        assistant_id=assistant_id,
        memories=[
            V.Memory(content=t, user_id="u", metadata={"n": str(i)}) for i, t in enumerate(texts)
        ],
        **fields,  # type: ignore[arg-type]
    )


async def _count(api: Mem, assistant_id: str) -> int:
    total, token = 0, ""
    while True:
        page = await api.call(
            api.memory.ListMemories,
            V.ListMemoriesRequest(assistant_id=assistant_id, page_size=1000, page_token=token),
        )
        total += len(page.memories)
        token = page.next_page_token
        if not token:
            return total


async def test_a_thousand_memories_in_one_call_in_order(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    texts = [f"Customer {i} ordered item {i * 7 % 1000} on day {i % 28 + 1}." for i in range(1000)]
    created = await mem.call(mem.memory.BatchCreateMemories, _batch(assistant_id, texts))
    assert [m.content for m in created.memories] == texts
    assert [m.metadata["n"] for m in created.memories] == [str(i) for i in range(1000)]
    assert all(m.kind == V.MEMORY_KIND_MANUAL and m.user_id == "u" for m in created.memories)
    assert len({m.memory_id for m in created.memories}) == 1000
    assert await _count(mem, assistant_id) == 1000
    found = await mem.call(
        mem.memory.SearchMemories,
        V.SearchMemoriesRequest(
            assistant_id=assistant_id, query="Customer 417 ordered", user_id="u"
        ),
    )
    assert found.results[0].memory.memory_id == created.memories[417].memory_id


async def test_a_bad_memory_fails_the_whole_batch(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    texts = ["One.", "Two.", "Three.", "   ", "Five."]
    error = await expect_error(
        mem.call(mem.memory.BatchCreateMemories, _batch(assistant_id, texts)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error_info(error)["field"] == "memories[3].content"
    for request, field in (
        (_batch(assistant_id, []), "memories"),
        (_batch(assistant_id, ["x."] * 1001), "memories"),
        (
            V.BatchCreateMemoriesRequest(
                assistant_id=assistant_id,
                memories=[
                    V.Memory(content="a."),
                    V.Memory(content="b.", assistant_id="asst_other"),
                ],
            ),
            "memories[1].assistant_id",
        ),
    ):
        error = await expect_error(
            mem.call(mem.memory.BatchCreateMemories, request), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error_info(error)["field"] == field
    assert await _count(mem, assistant_id) == 0


async def test_a_request_id_makes_a_retry_safe(mem: Mem, model: Model) -> None:
    assistant_id = await _assistant(mem)
    texts = [f"Fact number {i}." for i in range(20)]
    first = await mem.call(
        mem.memory.BatchCreateMemories, _batch(assistant_id, texts, request_id="import-1")
    )
    again = await mem.call(
        mem.memory.BatchCreateMemories, _batch(assistant_id, texts, request_id="import-1")
    )
    assert [m.memory_id for m in again.memories] == [m.memory_id for m in first.memories]
    assert [m.create_time for m in again.memories] == [m.create_time for m in first.memories]
    assert await _count(mem, assistant_id) == 20
    await expect_error(
        mem.call(
            mem.memory.BatchCreateMemories,
            _batch(assistant_id, [*texts[:19], "Something else."], request_id="import-1"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "REQUEST_ID_REUSED",
    )
    # A first call that wrote part of its batch: the repeat writes the rest.
    await mem.call(
        mem.memory.DeleteMemory,
        V.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=first.memories[5].memory_id),
    )
    mended = await mem.call(
        mem.memory.BatchCreateMemories, _batch(assistant_id, texts, request_id="import-1")
    )
    assert [m.memory_id for m in mended.memories] == [m.memory_id for m in first.memories]
    assert await _count(mem, assistant_id) == 20


async def test_one_request_id_sent_at_once_with_two_batches_keeps_one(
    mem: Mem, model: Model
) -> None:
    assistant_id = await _assistant(mem)
    batches = {side: [f"Fact {i} from side {side}." for i in range(200)] for side in ("a", "b")}
    results = await asyncio.gather(
        *(
            mem.call(
                mem.memory.BatchCreateMemories,
                _batch(assistant_id, texts, request_id="import-race"),
            )
            for texts in batches.values()
        ),
        return_exceptions=True,
    )
    kept = [r for r in results if isinstance(r, V.BatchCreateMemoriesResponse)]
    refused = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(kept) == 1, results
    assert len(refused) == 1, results
    assert refused[0].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(refused[0])["reason"] == "REQUEST_ID_REUSED"
    texts = [m.content for m in kept[0].memories]
    assert texts in batches.values()
    stored = await mem.call(
        mem.memory.ListMemories, V.ListMemoriesRequest(assistant_id=assistant_id, page_size=1000)
    )
    assert sorted(m.content for m in stored.memories) == sorted(texts)


async def test_a_sequence_is_indexed_with_its_neighbours(mem: Mem, model: Model) -> None:
    turns = [
        "Ann: We adopted a puppy last week.",
        "Ben: Lovely! What did you call it?",
        "Ann: Biscuit, after the colour of its fur.",
        "Ben: I planted tomatoes in the garden today.",
        "Ann: Mine never grow well in pots.",
    ]
    scores = {}
    for sequential in (False, True):
        assistant_id = await _assistant(mem)
        created = await mem.call(
            mem.memory.BatchCreateMemories, _batch(assistant_id, turns, sequential=sequential)
        )
        assert [m.content for m in created.memories] == turns
        # Ranked alone (the filter keeps only the answer), its score says
        # how well the question finds it.
        found = await mem.call(
            mem.memory.SearchMemories,
            V.SearchMemoriesRequest(
                assistant_id=assistant_id,
                query="What is the puppy's name?",
                user_id="u",
                filter="metadata.n = 2",
            ),
        )
        [hit] = found.results
        assert hit.memory.content == turns[2]  # the context is never part of it
        scores[sequential] = hit.score
    # "puppy" is in the turns around the answer, not in the answer itself.
    assert scores[True] > scores[False] + 0.05
