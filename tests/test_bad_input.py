"""Bad input found by hand, refused with INVALID_ARGUMENT naming the field
and what it accepts, and leaving nothing behind: enum numbers the contract
does not define, scores outside [0, 1], NUL characters in metadata, and
numbers past their bound."""

from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import field_mask_pb2, json_format
from grpc import aio

from generated.loom.v1 import (
    assistant_pb2,
    common_pb2,
    memory_pb2,
    memory_pb2_grpc,
    thread_pb2,
    tools_pb2,
)
from service.core.paging import encode_token
from service.server import Loom
from tests.conftest import Api, error_info, expect_error, new_tenant_key
from tests.scripted_llm import Reply, ScriptedLLM


class Mem(Api):
    """Api plus the MemoryService stub."""

    def __init__(self, channel: aio.Channel, key: str | None) -> None:
        super().__init__(channel, key)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)


@pytest.fixture
async def mem(loom: Loom, channel: aio.Channel) -> Mem:
    return Mem(channel, await new_tenant_key(loom))


async def _invalid(call: object, field: str) -> str:
    """Expect INVALID_ARGUMENT on ``field``; return the message."""
    error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert error_info(error)["field"] == field
    return str(error.details())


async def _assistants(api: Api) -> list[assistant_pb2.Assistant]:
    page = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=1000)
    )
    return list(page.assistants)


async def _threads(api: Api) -> list[str]:
    page = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(page_size=1000))
    return [t.thread_id for t in page.threads]


def _create(api: Api, **fields: object) -> object:
    return api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(**fields)),
    )


# -------------------------------------------------------------- enum numbers


@pytest.mark.parametrize(
    ("fields", "field", "accepted"),
    [
        ({"memory_mode": 99}, "assistant.memory_mode", "MEMORY_MODE_READONLY (2)"),
        ({"memory_mode": -1}, "assistant.memory_mode", "MEMORY_MODE_OFF (3)"),
        ({"context_strategy": -7}, "assistant.context_strategy", "CONTEXT_STRATEGY_TRUNCATE (2)"),
        ({"context_strategy": 3}, "assistant.context_strategy", "CONTEXT_STRATEGY_SUMMARIZE (1)"),
    ],
)
async def test_create_assistant_with_an_unknown_enum_number_is_refused(
    api: Api, fields: dict[str, int], field: str, accepted: str
) -> None:
    message = await _invalid(_create(api, name="bad enum", **fields), field)
    assert str(next(iter(fields.values()))) in message
    assert accepted in message, message
    assert await _assistants(api) == []


async def test_update_assistant_with_an_unknown_enum_number_changes_nothing(api: Api) -> None:
    created = (await _create(api, name="x", memory_mode=common_pb2.MEMORY_MODE_AUTO)).assistant  # type: ignore[attr-defined]
    for paths, fields, field in [
        (["memory_mode"], {"memory_mode": 99}, "assistant.memory_mode"),
        ([], {"memory_mode": 7}, "assistant.memory_mode"),  # no mask: the fields set
        (["*"], {"context_strategy": -7}, "assistant.context_strategy"),
    ]:
        await _invalid(
            api.call(
                api.assistants.UpdateAssistant,
                assistant_pb2.UpdateAssistantRequest(
                    assistant=assistant_pb2.Assistant(
                        assistant_id=created.assistant_id, name="changed", **fields
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=paths) if paths else None,
                ),
            ),
            field,
        )
    assert await _assistants(api) == [created]
    # A field outside the mask is not read (AIP-134), so it cannot be refused.
    updated = await api.call(
        api.assistants.UpdateAssistant,
        assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                assistant_id=created.assistant_id, name="renamed", memory_mode=99
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["name"]),
        ),
    )
    assert updated.assistant.name == "renamed"
    assert updated.assistant.memory_mode == common_pb2.MEMORY_MODE_AUTO


async def test_send_message_with_an_unknown_memory_number_is_refused(
    api: Api, llm: ScriptedLLM
) -> None:
    message = await _invalid(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", memory=99), metadata=api.metadata
        ),
        "memory",
    )
    assert "MEMORY_MODE_AUTO (1)" in message
    assert await _threads(api) == []
    assert llm.requests == []


# ------------------------------------------------------------------- numbers


@pytest.mark.parametrize("score", [math.nan, math.inf, -math.inf, 5.0, 1.5, -0.25])
async def test_search_with_a_min_score_outside_0_to_1_is_refused(mem: Mem, score: float) -> None:
    assistant = (await _create(mem, name="memory")).assistant  # type: ignore[attr-defined]
    message = await _invalid(
        mem.call(
            mem.memory.SearchMemories,
            memory_pb2.SearchMemoriesRequest(
                assistant_id=assistant.assistant_id, query="anything", min_score=score
            ),
        ),
        "min_score",
    )
    assert "[0, 1]" in message


@pytest.mark.parametrize("score", [0.0, 0.5, 1.0])
async def test_search_with_a_min_score_in_0_to_1_is_accepted(mem: Mem, score: float) -> None:
    assistant = (await _create(mem, name="memory")).assistant  # type: ignore[attr-defined]
    await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant.assistant_id, content="The user likes tea."
            )
        ),
    )
    found = await mem.call(
        mem.memory.SearchMemories,
        memory_pb2.SearchMemoriesRequest(
            assistant_id=assistant.assistant_id, query="tea", min_score=score
        ),
    )
    assert all(r.score >= score for r in found.results)
    if score == 0.0:
        assert len(found.results) == 1


@pytest.mark.parametrize("window", [2_147_483_647, 100_000_001, -1])
async def test_context_window_out_of_range_says_the_bounds(api: Api, window: int) -> None:
    message = await _invalid(
        _create(api, name="big window", context_window=window), "assistant.context_window"
    )
    assert f"{window:,}" in message
    assert "512 to 100,000,000" in message
    assert await _assistants(api) == []
    edge = (await _create(api, name="edge", context_window=100_000_000)).assistant  # type: ignore[attr-defined]
    assert edge.context_window == 100_000_000


# ------------------------------------------------------------------ metadata


async def test_metadata_key_with_nul_gets_its_own_message(api: Api) -> None:
    message = await _invalid(
        _create(api, name="nul", metadata={"a\x00b": "v"}), "assistant.metadata"
    )
    assert "NUL" in message
    assert "'$'" not in message
    message = await _invalid(
        _create(api, name="dollar", metadata={"$where": "v"}), "assistant.metadata"
    )
    assert "'$'" in message
    assert await _assistants(api) == []


async def test_metadata_value_with_nul_is_refused_everywhere(mem: Mem) -> None:
    bad = {"k": "a\x00b"}
    assert "NUL" in await _invalid(_create(mem, name="nul", metadata=bad), "assistant.metadata")
    assert "NUL" in await _invalid(
        mem.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", metadata=bad), metadata=mem.metadata
        ),
        "metadata",
    )
    assert await _threads(mem) == []
    assistant = (await _create(mem, name="memory")).assistant  # type: ignore[attr-defined]
    assert "NUL" in await _invalid(
        mem.call(
            mem.memory.CreateMemory,
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    assistant_id=assistant.assistant_id, content="fact", metadata=bad
                )
            ),
        ),
        "memory.metadata",
    )
    listed = await mem.call(
        mem.memory.ListMemories,
        memory_pb2.ListMemoriesRequest(assistant_id=assistant.assistant_id),
    )
    assert list(listed.memories) == []


# --------------------------------------------- found reading every request


@pytest.mark.parametrize("position", [True, -3, 1.5])
async def test_forged_page_token_positions_are_refused(
    loom: Loom, mem: Mem, position: object
) -> None:
    """Tokens are opaque but unsigned: a forged one with a position that is
    no sequence number or offset is refused, not read as 1 or 0."""
    assert mem.key is not None
    tenant = (await loom.keys.authenticate(mem.key)).tenant  # a forger knows its own tenant
    events = await mem.send(content="hi")
    thread_id = events[0].started.thread_id
    token = encode_token(
        position, {"list": "messages", "t": thread_id, "d": False, "tenant": tenant}
    )
    error = await _invalid(
        mem.call(
            mem.threads.ListMessages,
            thread_pb2.ListMessagesRequest(thread_id=thread_id, page_token=token),
        ),
        "page_token",
    )
    assistant = (await _create(mem, name="memory")).assistant  # type: ignore[attr-defined]
    assert "malformed" in error, error  # the position, not the fingerprint, was refused
    filters = {
        "list": "memories",
        "a": assistant.assistant_id,
        "u": "",
        "w": False,
        "i": False,
        "f": [],  # the canonical form of no filter
        "tenant": tenant,
    }
    error = await _invalid(
        mem.call(
            mem.memory.ListMemories,
            memory_pb2.ListMemoriesRequest(
                assistant_id=assistant.assistant_id, page_token=encode_token(position, filters)
            ),
        ),
        "page_token",
    )
    assert "malformed" in error, error


async def test_update_memory_cannot_move_it_to_another_user(mem: Mem) -> None:
    assistant = (await _create(mem, name="memory")).assistant  # type: ignore[attr-defined]
    created = await mem.call(
        mem.memory.CreateMemory,
        memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant.assistant_id, user_id="ann", content="Likes tea."
            )
        ),
    )
    memory = created.memory
    for mask in (None, ["user_id"], ["content", "user_id"]):
        moved = memory_pb2.Memory(
            assistant_id=memory.assistant_id,
            memory_id=memory.memory_id,
            user_id="bob",
            content="Likes coffee.",
        )
        message = await _invalid(
            mem.call(
                mem.memory.UpdateMemory,
                memory_pb2.UpdateMemoryRequest(
                    memory=moved,
                    update_mask=field_mask_pb2.FieldMask(paths=mask) if mask else None,
                ),
            ),
            "memory.user_id",
        )
        assert "keeps the user" in message
    # The same user sent back with the rest (a read, modify, write) is fine.
    same = memory_pb2.Memory(
        assistant_id=memory.assistant_id,
        memory_id=memory.memory_id,
        user_id="ann",
        content="Likes green tea.",
    )
    updated = await mem.call(mem.memory.UpdateMemory, memory_pb2.UpdateMemoryRequest(memory=same))
    assert (updated.memory.user_id, updated.memory.content) == ("ann", "Likes green tea.")


async def test_tool_output_with_nul_is_refused_and_the_run_still_waits(
    api: Api, llm: ScriptedLLM
) -> None:
    tool = json_format.ParseDict(
        {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
        tools_pb2.Tool(),
    )
    llm.script(Reply(text="", tool_calls=[{"id": "call_1", "name": "lookup", "arguments": "{}"}]))
    events = await api.send(content="look it up", tools=[tool])
    required = events[-1].tool_calls_required
    thread_id = events[0].started.thread_id
    message = await _invalid(
        api.threads.SubmitToolOutputs(
            thread_pb2.SubmitToolOutputsRequest(
                thread_id=thread_id,
                run_id=required.run_id,
                tool_outputs=[tools_pb2.ToolOutput(tool_call_id="call_1", output="a\x00b")],
            ),
            metadata=api.metadata,
        ),
        "tool_outputs[0].output",
    )
    assert "NUL" in message
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    assert got.thread.pending_run_id == required.run_id


@pytest.mark.parametrize(
    "method",
    [
        "/loom.v1.ThreadService/GetThread",
        "/loom.v1.ThreadService/SendMessage",
        "/loom.v1.AssistantService/CreateAssistant",
        "/loom.v1.MemoryService/SearchMemories",
    ],
)
async def test_a_request_that_does_not_parse_is_invalid_not_unknown(
    api: Api, llm: ScriptedLLM, method: str
) -> None:
    """Field 1 with bytes that are not UTF-8 where a string (or a message
    holding one) is expected."""
    body = b"\x0a\x02\xff\xfe"
    stream = method.endswith("SendMessage")
    make = api.channel.unary_stream if stream else api.channel.unary_unary
    call = make(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    error = await expect_error(
        call(body, metadata=api.metadata), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"
    )
    assert "does not parse" in error.details()
    # An unknown caller is told that first.
    await expect_error(call(body), grpc.StatusCode.UNAUTHENTICATED)
    assert await _threads(api) == []
    assert llm.requests == []


async def test_tool_description_with_nul_is_refused(api: Api) -> None:
    tool = json_format.ParseDict(
        {"type": "function", "function": {"name": "lookup", "description": "a\x00b"}},
        tools_pb2.Tool(),
    )
    message = await _invalid(
        _create(api, name="tools", tools=[tool]), "assistant.tools[0].function.description"
    )
    assert "NUL" in message
    assert await _assistants(api) == []
