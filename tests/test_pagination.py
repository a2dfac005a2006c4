"""AIP-158 pagination on ListAssistants, ListThreads, ListMessages and
ListMemories: order, completeness, page sizes and page tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from generated.loom.v1 import assistant_pb2, memory_pb2, memory_pb2_grpc, thread_pb2
from service.server import Loom
from tests.conftest import Api, error_info, expect_error, new_tenant_key
from tests.scripted_llm import Reply, ScriptedLLM

# --------------------------------------------------------------------- helpers


async def _assistant(api: Api, name: str) -> str:
    response = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name=name)),
    )
    return response.assistant.assistant_id


async def _thread(api: Api, assistant_id: str = "", user_id: str = "") -> str:
    response = await api.call(
        api.threads.CreateThread,
        thread_pb2.CreateThreadRequest(
            thread=thread_pb2.Thread(assistant_id=assistant_id, user_id=user_id)
        ),
    )
    return response.thread.thread_id


async def _conversation(api: Api, exchanges: int) -> str:
    """A thread with ``2 * exchanges`` messages."""
    first = await api.send(content="message 0")
    thread_id = first[0].started.thread_id
    for i in range(1, exchanges):
        await api.send(content=f"message {i}", thread_id=thread_id)
    return thread_id


async def _walk(
    fetch: Callable[[str], Awaitable[tuple[list[str], str]]], max_pages: int = 100
) -> list[list[str]]:
    """Every page, following next_page_token until it is empty."""
    pages: list[list[str]] = []
    token = ""
    while True:
        items, token = await fetch(token)
        pages.append(items)
        if not token:
            return pages
        assert len(pages) < max_pages, "next_page_token never ran out"


def _assistants_fetch(
    api: Api, page_size: int
) -> Callable[[str], Awaitable[tuple[list[str], str]]]:
    async def fetch(token: str) -> tuple[list[str], str]:
        page = await api.call(
            api.assistants.ListAssistants,
            assistant_pb2.ListAssistantsRequest(page_size=page_size, page_token=token),
        )
        return [a.assistant_id for a in page.assistants], page.next_page_token

    return fetch


def _threads_fetch(
    api: Api, page_size: int, assistant_id: str = "", user_id: str = ""
) -> Callable[[str], Awaitable[tuple[list[str], str]]]:
    async def fetch(token: str) -> tuple[list[str], str]:
        page = await api.call(
            api.threads.ListThreads,
            thread_pb2.ListThreadsRequest(
                assistant_id=assistant_id, user_id=user_id, page_size=page_size, page_token=token
            ),
        )
        return [t.thread_id for t in page.threads], page.next_page_token

    return fetch


def _messages_fetch(
    api: Api, thread_id: str, page_size: int, order_by: str = ""
) -> Callable[[str], Awaitable[tuple[list[str], str]]]:
    async def fetch(token: str) -> tuple[list[str], str]:
        page = await api.call(
            api.threads.ListMessages,
            thread_pb2.ListMessagesRequest(
                thread_id=thread_id, page_size=page_size, page_token=token, order_by=order_by
            ),
        )
        return [m.message_id for m in page.messages], page.next_page_token

    return fetch


async def _message_ids(api: Api, thread_id: str) -> list[str]:
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    assert [m.sequence for m in page.messages] == list(range(len(page.messages)))
    return [m.message_id for m in page.messages]


def _flat(pages: list[list[str]]) -> list[str]:
    return [item for page in pages for item in page]


# --------------------------------------------------------------- ListAssistants


async def test_list_assistants_walks_every_page_newest_first(api: Api) -> None:
    created = [await _assistant(api, f"a{i}") for i in range(7)]
    pages = await _walk(_assistants_fetch(api, 3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert _flat(pages) == created[::-1]


async def test_list_assistants_last_full_page_has_no_token(api: Api) -> None:
    created = [await _assistant(api, f"a{i}") for i in range(6)]
    pages = await _walk(_assistants_fetch(api, 3))
    assert [len(p) for p in pages] == [3, 3]
    assert _flat(pages) == created[::-1]


async def test_list_assistants_empty_tenant(api: Api) -> None:
    assert await _walk(_assistants_fetch(api, 5)) == [[]]


async def test_list_assistants_page_size_zero_means_fifty(api: Api) -> None:
    created = [await _assistant(api, f"a{i}") for i in range(51)]
    first = await api.call(api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest())
    assert len(first.assistants) == 50
    assert first.next_page_token
    rest = await api.call(
        api.assistants.ListAssistants,
        assistant_pb2.ListAssistantsRequest(page_token=first.next_page_token),
    )
    assert [a.assistant_id for a in rest.assistants] == [created[0]]
    assert rest.next_page_token == ""
    assert [a.assistant_id for a in first.assistants] == created[:0:-1]


async def test_list_assistants_oversized_page_size_is_accepted(api: Api) -> None:
    created = [await _assistant(api, f"a{i}") for i in range(3)]
    page = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=5000)
    )
    assert [a.assistant_id for a in page.assistants] == created[::-1]
    assert page.next_page_token == ""


# ------------------------------------------------------------------ ListThreads


async def test_list_threads_walks_every_page_newest_first(api: Api) -> None:
    created = [await _thread(api) for _ in range(7)]
    for size in (1, 2, 3, 7):
        pages = await _walk(_threads_fetch(api, size))
        assert _flat(pages) == created[::-1], size
        assert all(len(p) == size for p in pages[:-1])
        assert 1 <= len(pages[-1]) <= size
    single = await _walk(_threads_fetch(api, 8))
    assert single == [created[::-1]]


async def test_list_threads_filters_by_assistant_and_user(api: Api) -> None:
    red = await _assistant(api, "red")
    blue = await _assistant(api, "blue")
    layout = [
        (red, "alice"),
        (blue, "alice"),
        (red, "bob"),
        (red, "alice"),
        (blue, "bob"),
        (red, ""),
        (blue, "alice"),
        (red, "alice"),
    ]
    created = [(await _thread(api, a, u), a, u) for a, u in layout]

    def expected(assistant_id: str = "", user_id: str = "") -> list[str]:
        return [
            t
            for t, a, u in reversed(created)
            if (not assistant_id or a == assistant_id) and (not user_id or u == user_id)
        ]

    cases = [
        ("", ""),
        (red, ""),
        (blue, ""),
        ("", "alice"),
        ("", "bob"),
        (red, "alice"),
        (blue, "bob"),
        (blue, "carol"),
    ]
    for assistant_id, user_id in cases:
        want = expected(assistant_id, user_id)
        pages = await _walk(_threads_fetch(api, 2, assistant_id, user_id))
        got = _flat(pages)
        assert got == want, (assistant_id, user_id)
        assert len(set(got)) == len(got)
    assert len(expected(red, "alice")) == 3  # the layout really exercises paging


async def test_list_threads_new_thread_during_walk_is_not_repeated(api: Api) -> None:
    created = [await _thread(api) for _ in range(5)]
    fetch = _threads_fetch(api, 2)
    first, token = await fetch("")
    assert first == created[:2:-1]
    newcomer = await _thread(api)
    seen = list(first)
    while token:
        items, token = await fetch(token)
        seen.extend(items)
    assert seen == created[::-1]
    assert newcomer not in seen
    again = _flat(await _walk(fetch))
    assert again == [newcomer, *created[::-1]]


async def test_list_threads_page_size_zero_means_fifty(api: Api) -> None:
    created = [await _thread(api) for _ in range(51)]
    first = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in first.threads] == created[:0:-1]
    assert first.next_page_token
    rest = await api.call(
        api.threads.ListThreads, thread_pb2.ListThreadsRequest(page_token=first.next_page_token)
    )
    assert [t.thread_id for t in rest.threads] == [created[0]]
    assert rest.next_page_token == ""


async def test_list_threads_oversized_page_size_is_accepted(api: Api) -> None:
    created = [await _thread(api) for _ in range(3)]
    page = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(page_size=5000))
    assert [t.thread_id for t in page.threads] == created[::-1]
    assert page.next_page_token == ""


# ----------------------------------------------------------------- ListMessages


async def test_list_messages_walks_oldest_first_by_default(api: Api) -> None:
    thread_id = await _conversation(api, 4)
    all_ids = await _message_ids(api, thread_id)
    assert len(all_ids) == 8
    for order_by in ("", "sequence", "sequence asc"):
        for size in (1, 3, 8):
            pages = await _walk(_messages_fetch(api, thread_id, size, order_by))
            assert _flat(pages) == all_ids, (order_by, size)
            assert all(len(p) == size for p in pages[:-1])
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=3),
    )
    assert [m.sequence for m in page.messages] == [0, 1, 2]
    assert [m.content for m in page.messages] == ["message 0", "Echo: message 0", "message 1"]


async def test_list_messages_sequence_desc_walks_newest_first(api: Api) -> None:
    thread_id = await _conversation(api, 4)
    all_ids = await _message_ids(api, thread_id)
    for size in (1, 3, 5, 8, 9):
        pages = await _walk(_messages_fetch(api, thread_id, size, "sequence desc"))
        assert _flat(pages) == all_ids[::-1], size
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=3, order_by="sequence desc"),
    )
    assert [m.sequence for m in page.messages] == [7, 6, 5]


async def test_list_messages_of_an_empty_thread(api: Api) -> None:
    thread_id = await _thread(api)
    for order_by in ("", "sequence desc"):
        assert await _walk(_messages_fetch(api, thread_id, 2, order_by)) == [[]]


async def test_list_messages_page_size_zero_means_fifty(api: Api, llm: ScriptedLLM) -> None:
    llm.set_default(Reply(text="ok"))
    thread_id = await _conversation(api, 26)
    all_ids = await _message_ids(api, thread_id)
    assert len(all_ids) == 52
    first = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)
    )
    assert [m.message_id for m in first.messages] == all_ids[:50]
    assert first.next_page_token
    rest = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_token=first.next_page_token),
    )
    assert [m.message_id for m in rest.messages] == all_ids[50:]
    assert rest.next_page_token == ""


async def test_list_messages_oversized_page_size_is_accepted(api: Api) -> None:
    thread_id = await _conversation(api, 2)
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=5000),
    )
    assert [m.sequence for m in page.messages] == [0, 1, 2, 3]
    assert page.next_page_token == ""


@pytest.mark.parametrize(
    "order_by",
    ["sequence descending", "create_time desc", "desc", "sequence desc, sequence", "random"],
)
async def test_list_messages_bad_order_by_is_refused(api: Api, order_by: str) -> None:
    thread_id = await _conversation(api, 1)
    error = await expect_error(
        api.call(
            api.threads.ListMessages,
            thread_pb2.ListMessagesRequest(thread_id=thread_id, order_by=order_by),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = error_info(error)
    assert info["field"] == "order_by"
    assert info["domain"] == "loom.v1"


# ------------------------------------------------------------- bad page sizes


async def _list_call(api: Api, kind: str, thread_id: str, **fields: Any) -> Any:
    if kind == "assistants":
        return await api.call(
            api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(**fields)
        )
    if kind == "threads":
        return await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(**fields))
    if kind == "memories":
        request = thread_pb2.GetThreadRequest(thread_id=thread_id)
        got = await api.call(api.threads.GetThread, request)
        return await api.call(
            memory_pb2_grpc.MemoryServiceStub(api.channel).ListMemories,
            memory_pb2.ListMemoriesRequest(assistant_id=got.thread.assistant_id, **fields),
        )
    return await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id, **fields)
    )


LISTS = ["assistants", "threads", "messages", "memories"]


@pytest.mark.parametrize("kind", LISTS)
@pytest.mark.parametrize("page_size", [-1, -1000])
async def test_negative_page_size_is_refused(api: Api, kind: str, page_size: int) -> None:
    thread_id = await _conversation(api, 1)
    error = await expect_error(
        _list_call(api, kind, thread_id, page_size=page_size),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = error_info(error)
    assert info["domain"] == "loom.v1"
    assert info["field"] == "page_size"
    assert "page_size" in error.details()


def _forged(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


GARBAGE_TOKENS = [
    "garbage",
    "!!!!",
    "e30",  # "{}"
    _forged([1, 2]),
    _forged({"v": 99, "a": "x", "f": "0"}),
    _forged({"v": 1, "a": "thread_" + "f" * 24, "f": "not-the-fingerprint"}),
    "\u00e9\u00e9\u00e9",
]


@pytest.mark.parametrize("kind", LISTS)
@pytest.mark.parametrize("token", GARBAGE_TOKENS)
async def test_garbage_page_token_is_refused(api: Api, kind: str, token: str) -> None:
    thread_id = await _conversation(api, 1)
    error = await expect_error(
        _list_call(api, kind, thread_id, page_token=token),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    info = error_info(error)
    assert info["domain"] == "loom.v1"
    assert info["field"] == "page_token"


@pytest.mark.parametrize("kind", LISTS)
async def test_deeply_nested_page_token_is_refused(api: Api, kind: str) -> None:
    thread_id = await _conversation(api, 1)
    token = base64.urlsafe_b64encode(b"[" * 100_000).decode().rstrip("=")
    error = await expect_error(
        _list_call(api, kind, thread_id, page_token=token),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "page_token"


# ------------------------------------------------------------ tokens replayed


async def test_threads_token_reused_with_another_user_id_is_refused(api: Api) -> None:
    for user in ("a", "a", "a", "b", "b", "b"):
        await _thread(api, user_id=user)
    first = await api.call(
        api.threads.ListThreads, thread_pb2.ListThreadsRequest(user_id="a", page_size=2)
    )
    assert first.next_page_token
    error = await expect_error(
        api.call(
            api.threads.ListThreads,
            thread_pb2.ListThreadsRequest(
                user_id="b", page_size=2, page_token=first.next_page_token
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "page_token"
    # Nor with the filter dropped, nor with an assistant filter added.
    default = (
        (await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest()))
        .threads[0]
        .assistant_id
    )
    for request in (
        thread_pb2.ListThreadsRequest(page_size=2, page_token=first.next_page_token),
        thread_pb2.ListThreadsRequest(
            user_id="a", assistant_id=default, page_size=2, page_token=first.next_page_token
        ),
    ):
        await expect_error(
            api.call(api.threads.ListThreads, request),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        )
    # With the same filter it still works (the page size may change).
    rest = await api.call(
        api.threads.ListThreads,
        thread_pb2.ListThreadsRequest(user_id="a", page_size=10, page_token=first.next_page_token),
    )
    assert len(rest.threads) == 1
    assert rest.threads[0].user_id == "a"


async def test_threads_token_reused_with_another_assistant_is_refused(api: Api) -> None:
    red = await _assistant(api, "red")
    blue = await _assistant(api, "blue")
    for _ in range(3):
        await _thread(api, red)
        await _thread(api, blue)
    first = await api.call(
        api.threads.ListThreads, thread_pb2.ListThreadsRequest(assistant_id=red, page_size=1)
    )
    assert first.next_page_token
    await expect_error(
        api.call(
            api.threads.ListThreads,
            thread_pb2.ListThreadsRequest(
                assistant_id=blue, page_size=1, page_token=first.next_page_token
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


@pytest.mark.parametrize(
    ("first_order", "second_order"),
    [("", "sequence desc"), ("sequence desc", ""), ("sequence desc", "sequence asc")],
)
async def test_messages_token_reused_with_another_order_is_refused(
    api: Api, first_order: str, second_order: str
) -> None:
    thread_id = await _conversation(api, 2)
    first = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1, order_by=first_order),
    )
    assert first.next_page_token
    error = await expect_error(
        api.call(
            api.threads.ListMessages,
            thread_pb2.ListMessagesRequest(
                thread_id=thread_id,
                page_size=1,
                order_by=second_order,
                page_token=first.next_page_token,
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "page_token"


async def test_messages_token_of_another_thread_is_refused(api: Api) -> None:
    one = await _conversation(api, 2)
    two = await _conversation(api, 2)
    first = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=one, page_size=1)
    )
    await expect_error(
        api.call(
            api.threads.ListMessages,
            thread_pb2.ListMessagesRequest(
                thread_id=two, page_size=1, page_token=first.next_page_token
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )


async def test_token_of_one_list_is_refused_by_another(api: Api) -> None:
    thread_id = await _conversation(api, 2)
    for i in range(2):
        await _assistant(api, f"a{i}")
        await _thread(api)
    assistants = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=1)
    )
    threads = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(page_size=1))
    messages = await api.call(
        api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1)
    )
    memory = memory_pb2_grpc.MemoryServiceStub(api.channel)
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    for i in range(2):
        await api.call(
            memory.CreateMemory,
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(assistant_id=got.thread.assistant_id, content=f"m{i}")
            ),
        )
    memories = await _list_call(api, "memories", thread_id, page_size=1)
    tokens = {
        "assistants": assistants.next_page_token,
        "threads": threads.next_page_token,
        "messages": messages.next_page_token,
        "memories": memories.next_page_token,
    }
    assert all(tokens.values())
    for issued_by, token in tokens.items():
        for kind in LISTS:
            if kind == issued_by:
                continue
            await expect_error(
                _list_call(api, kind, thread_id, page_token=token),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ARGUMENT",
            )


async def test_a_token_replayed_by_another_tenant_is_refused(api: Api, loom: Loom) -> None:
    """Found by the isolation state machine (tests/test_isolation.py): a
    ListAssistants token of one tenant was accepted from another's key."""
    for i in range(3):
        await _assistant(api, f"a{i}")
    first = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=1)
    )
    assert first.next_page_token
    other = Api(api.channel, await new_tenant_key(loom))
    error = await expect_error(
        other.call(
            other.assistants.ListAssistants,
            assistant_pb2.ListAssistantsRequest(page_size=1, page_token=first.next_page_token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert error_info(error)["field"] == "page_token"
    # The tenant it was issued to still pages with it.
    second = await api.call(
        api.assistants.ListAssistants,
        assistant_pb2.ListAssistantsRequest(page_size=1, page_token=first.next_page_token),
    )
    assert len(second.assistants) == 1
