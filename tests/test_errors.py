"""Every error the API promises, through the real server: status code, a
human message, and google.rpc.ErrorInfo with the reason and domain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from grpc import aio

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.core.ports import JobState
from service.server import Loom
from tests.conftest import (
    Api,
    error_info,
    expect_error,
    make_settings,
    new_tenant_key,
    start_loom,
)
from tests.scripted_llm import Fail, Hang, Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB

DOMAIN = "loom.v1"
UNKNOWN_THREAD = "thread_" + "0" * 24
UNKNOWN_ASSISTANT = "asst_" + "0" * 24
MAX_CONTENT = 100_000  # LOOM_MAX_MESSAGE_CHARS default, as the session server runs


async def _expect(
    call: Any, code: grpc.StatusCode, reason: str, **metadata: str
) -> aio.AioRpcError:
    """expect_error, plus the domain and any ErrorInfo metadata."""
    error = await expect_error(call, code, reason)
    info = error_info(error)
    assert info["domain"] == DOMAIN
    for key, value in metadata.items():
        assert info.get(key) == value, (key, info)
    return error


async def _messages(api: Api, thread_id: str) -> list[thread_pb2.Message]:
    page = await api.call(
        api.threads.ListMessages,
        thread_pb2.ListMessagesRequest(thread_id=thread_id, page_size=1000),
    )
    return list(page.messages)


async def _thread_ids(api: Api) -> list[str]:
    page = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(page_size=1000))
    return [t.thread_id for t in page.threads]


async def _assistant_ids(api: Api) -> list[str]:
    page = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest(page_size=1000)
    )
    return [a.assistant_id for a in page.assistants]


async def _new_thread(api: Api, **fields: Any) -> str:
    events = await api.send(content="hello", **fields)
    return events[0].started.thread_id


async def _message_count(api: Api, thread_id: str) -> int:
    got = await api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    return got.thread.message_count


def _text(events: list[thread_pb2.SendMessageResponse]) -> str:
    return "".join(e.delta.text for e in events if e.HasField("delta"))


# ------------------------------------------------------------- INVALID_ARGUMENT


@pytest.mark.parametrize("content", ["", " ", "   \n\t  ", "\u3000"])
async def test_blank_content_is_invalid_and_leaves_nothing(
    api: Api, llm: ScriptedLLM, content: str
) -> None:
    error = await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content=content), metadata=api.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field="content",
    )
    assert "content" in error.details()
    assert await _thread_ids(api) == []
    assert await _assistant_ids(api) == []
    assert llm.requests == []


async def test_blank_content_on_an_existing_thread_adds_nothing(api: Api) -> None:
    thread_id = await _new_thread(api)
    await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="  ", thread_id=thread_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field="content",
    )
    assert len(await _messages(api, thread_id)) == 2


async def test_content_over_the_limit_is_invalid_and_leaves_nothing(
    api: Api, llm: ScriptedLLM
) -> None:
    error = await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="x" * (MAX_CONTENT + 1)),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field="content",
    )
    assert "100,000" in error.details() or "100000" in error.details()
    assert await _thread_ids(api) == []
    assert await _assistant_ids(api) == []
    assert llm.requests == []


async def test_content_at_the_limit_is_accepted(api: Api, loom: Loom, llm: ScriptedLLM) -> None:
    llm.script(Reply(text="long one received"))
    events = await api.send(content="y" * MAX_CONTENT)
    assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    stored = await _messages(api, events[0].started.thread_id)
    assert len(stored[0].content) == MAX_CONTENT
    # So long a message may be folded into a summary by a job: let it end
    # here, not call the model while the next test counts its requests.
    tenant = (await loom.keys.authenticate(api.key)).tenant

    async def open_jobs() -> int:
        states = (JobState.PENDING, JobState.RUNNING)
        return sum([len(await loom.store.jobs.find(s, tenant, 10)) for s in states])

    for _ in range(600):  # a minute at most
        if not await open_jobs():
            break
        await asyncio.sleep(0.1)
    assert await open_jobs() == 0


MALFORMED_CALLS = [
    ("GetThread", "thread_id"),
    ("DeleteThread", "thread_id"),
    ("ListMessages", "thread_id"),
    ("SendMessage.thread_id", "thread_id"),
    ("GetAssistant", "assistant_id"),
    ("DeleteAssistant", "assistant_id"),
    ("UpdateAssistant", "assistant.assistant_id"),
    ("SendMessage.assistant_id", "assistant_id"),
    ("CreateThread", "assistant_id"),
    ("ListThreads", "assistant_id"),
]


def _call_with_id(api: Api, rpc: str, value: str) -> Any:
    if rpc == "GetThread":
        return api.call(api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=value))
    if rpc == "DeleteThread":
        return api.call(api.threads.DeleteThread, thread_pb2.DeleteThreadRequest(thread_id=value))
    if rpc == "ListMessages":
        return api.call(api.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=value))
    if rpc == "SendMessage.thread_id":
        return api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", thread_id=value), metadata=api.metadata
        )
    if rpc == "SendMessage.assistant_id":
        return api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", assistant_id=value), metadata=api.metadata
        )
    if rpc == "GetAssistant":
        return api.call(
            api.assistants.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=value)
        )
    if rpc == "DeleteAssistant":
        return api.call(
            api.assistants.DeleteAssistant,
            assistant_pb2.DeleteAssistantRequest(assistant_id=value),
        )
    if rpc == "UpdateAssistant":
        request = assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(assistant_id=value, name="x")
        )
        request.update_mask.paths.append("name")
        return api.call(api.assistants.UpdateAssistant, request)
    if rpc == "CreateThread":
        return api.call(
            api.threads.CreateThread,
            thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(assistant_id=value)),
        )
    if rpc == "ListThreads":
        return api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(assistant_id=value))
    raise AssertionError(rpc)


@pytest.mark.parametrize(("rpc", "field"), MALFORMED_CALLS)
async def test_malformed_id_is_invalid(api: Api, llm: ScriptedLLM, rpc: str, field: str) -> None:
    wrong_kind = UNKNOWN_ASSISTANT if field.endswith("thread_id") else UNKNOWN_THREAD
    malformed = "thread_123" if field.endswith("thread_id") else "asst_xyz"
    for value in (malformed, wrong_kind, malformed.upper(), malformed + " "):
        error = await _expect(
            _call_with_id(api, rpc, value),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            field=field,
        )
        assert field.rsplit(".", 1)[-1] in error.details()
    assert await _thread_ids(api) == []
    assert llm.requests == []


async def test_send_with_another_assistant_than_the_threads_is_invalid(api: Api) -> None:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="other")),
    )
    other = created.assistant.assistant_id
    first = await api.send(content="hello")
    thread_id = first[0].started.thread_id
    own = first[0].started.assistant_id
    assert own != other
    error = await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", thread_id=thread_id, assistant_id=other),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field="assistant_id",
    )
    assert other in error.details()
    assert len(await _messages(api, thread_id)) == 2
    # The thread's own assistant is fine.
    ok = await api.send(content="same assistant", thread_id=thread_id, assistant_id=own)
    assert ok[-1].completed.message.sequence == 3


async def test_send_with_another_user_than_the_threads_is_invalid(api: Api) -> None:
    thread_id = await _new_thread(api, user_id="alice")
    for user in ("bob", "Alice", "alice "):
        await _expect(
            api.threads.SendMessage(
                thread_pb2.SendMessageRequest(content="hi", thread_id=thread_id, user_id=user),
                metadata=api.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            field="user_id",
        )
    assert len(await _messages(api, thread_id)) == 2
    ok = await api.send(content="still alice", thread_id=thread_id, user_id="alice")
    assert ok[-1].completed.message.sequence == 3


async def test_send_with_a_user_to_a_thread_without_one_is_invalid(api: Api) -> None:
    thread_id = await _new_thread(api)
    await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", thread_id=thread_id, user_id="mallory"),
            metadata=api.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field="user_id",
    )
    assert len(await _messages(api, thread_id)) == 2


# ------------------------------------------------------------------- NOT_FOUND


@pytest.mark.parametrize(
    "rpc",
    [
        "GetThread",
        "DeleteThread",
        "ListMessages",
        "SendMessage.thread_id",
        "GetAssistant",
        "DeleteAssistant",
        "UpdateAssistant",
        "SendMessage.assistant_id",
        "CreateThread",
    ],
)
async def test_unknown_id_is_not_found(api: Api, llm: ScriptedLLM, rpc: str) -> None:
    kind = "thread" if rpc in {"GetThread", "DeleteThread", "ListMessages"} else "assistant"
    if rpc == "SendMessage.thread_id":
        kind = "thread"
    value = UNKNOWN_THREAD if kind == "thread" else UNKNOWN_ASSISTANT
    error = await _expect(
        _call_with_id(api, rpc, value),
        grpc.StatusCode.NOT_FOUND,
        f"{kind.upper()}_NOT_FOUND",
        **{f"{kind}_id": value},
    )
    assert value in error.details()
    assert await _thread_ids(api) == []
    assert llm.requests == []


async def test_deleted_thread_is_not_found(api: Api) -> None:
    thread_id = await _new_thread(api)
    deleted = await api.call(
        api.threads.DeleteThread, thread_pb2.DeleteThreadRequest(thread_id=thread_id)
    )
    assert deleted.deleted_message_count == 2
    for rpc in ("GetThread", "DeleteThread", "ListMessages", "SendMessage.thread_id"):
        await _expect(
            _call_with_id(api, rpc, thread_id),
            grpc.StatusCode.NOT_FOUND,
            "THREAD_NOT_FOUND",
            thread_id=thread_id,
        )


# ------------------------------------------------------------- UNAUTHENTICATED


async def test_no_api_key_is_unauthenticated(channel: aio.Channel) -> None:
    anonymous = Api(channel, None)
    error = await _expect(
        anonymous.call(anonymous.threads.ListThreads, thread_pb2.ListThreadsRequest()),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_MISSING",
    )
    assert "x-api-key" in error.details()
    await _expect(
        anonymous.threads.SendMessage(thread_pb2.SendMessageRequest(content="hi")),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_MISSING",
    )


async def test_wrong_api_key_is_unauthenticated(channel: aio.Channel, api: Api) -> None:
    assert api.key is not None
    for key in ("loom_000000000000_not-a-real-secret", api.key + "x", api.key[:-1], "nonsense"):
        impostor = Api(channel, key)
        error = await _expect(
            impostor.call(impostor.threads.ListThreads, thread_pb2.ListThreadsRequest()),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        )
        assert "not valid" in error.details()
        assert key not in error.details()
        await _expect(
            impostor.threads.SendMessage(
                thread_pb2.SendMessageRequest(content="hi"), metadata=impostor.metadata
            ),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
        )


# ------------------------------------------------------------ model failures


async def test_rate_limited_on_every_attempt_is_resource_exhausted(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _new_thread(api)
    llm.reset()
    llm.script(*[Fail(status=429, retry_after_ms=1)] * 3)
    call = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="please answer", thread_id=thread_id),
        metadata=api.metadata,
    )
    error = await _expect(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_RATE_LIMITED")
    assert "429" in error.details()
    assert len(llm.requests) == 3
    stored = await _messages(api, thread_id)
    assert [m.role for m in stored[2:]] == [thread_pb2.ROLE_USER, thread_pb2.ROLE_ASSISTANT]
    assert stored[2].content == "please answer"
    assert stored[3].status == thread_pb2.MESSAGE_STATUS_FAILED
    assert stored[3].content == ""
    assert await _message_count(api, thread_id) == 4


async def test_model_failing_on_every_attempt_is_unavailable(api: Api, llm: ScriptedLLM) -> None:
    thread_id = await _new_thread(api)
    llm.reset()
    llm.script(*[Fail(status=500)] * 3)
    error = await _expect(
        api.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="please answer", thread_id=thread_id),
            metadata=api.metadata,
        ),
        grpc.StatusCode.UNAVAILABLE,
        "MODEL_UNAVAILABLE",
    )
    assert "500" in error.details()
    assert len(llm.requests) == 3
    stored = await _messages(api, thread_id)
    assert stored[-1].status == thread_pb2.MESSAGE_STATUS_FAILED
    # The thread is not stuck: the next message gets a normal reply.
    after = await api.send(content="try again", thread_id=thread_id)
    assert after[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert after[-1].completed.message.sequence == 5
    assert await _message_count(api, thread_id) == 6


async def test_one_model_failure_is_retried_transparently(api: Api, llm: ScriptedLLM) -> None:
    llm.script(Fail(status=500), Reply(text="second time lucky"))
    events = await api.send(content="hello")
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "completed"
    assert _text(events) == "second time lucky"
    done = events[-1].completed.message
    assert done.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert done.content == "second time lucky"
    assert len(llm.requests) == 2
    assert llm.requests[0].body["messages"] == llm.requests[1].body["messages"]
    stored = await _messages(api, events[0].started.thread_id)
    assert [m.content for m in stored] == ["hello", "second time lucky"]


async def test_model_hanging_on_every_attempt_is_unavailable_timeout(
    api: Api, llm: ScriptedLLM
) -> None:
    llm.script(Hang(), Hang(), Hang())
    began = time.monotonic()
    call = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="are you there?"), metadata=api.metadata
    )
    error = await _expect(call, grpc.StatusCode.UNAVAILABLE, "MODEL_TIMEOUT")
    elapsed = time.monotonic() - began
    assert 5.5 <= elapsed < 30, elapsed
    assert len(llm.requests) == 3
    assert "2s" in error.details()
    thread_id = (await _thread_ids(api))[0]
    stored = await _messages(api, thread_id)
    assert stored[-1].status == thread_pb2.MESSAGE_STATUS_FAILED


async def test_caller_deadline_is_deadline_exceeded_and_reply_is_incomplete(
    api: Api, llm: ScriptedLLM
) -> None:
    thread_id = await _new_thread(api)
    llm.reset()
    llm.script(Hang())
    call = api.threads.SendMessage(
        thread_pb2.SendMessageRequest(content="take your time", thread_id=thread_id),
        metadata=api.metadata,
        timeout=0.5,
    )
    began = time.monotonic()
    await expect_error(call, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert time.monotonic() - began < 1.9  # the caller's deadline, not the model timeout

    reply: thread_pb2.Message | None = None
    for _ in range(200):
        stored = await _messages(api, thread_id)
        if len(stored) == 4 and stored[-1].status != thread_pb2.MESSAGE_STATUS_IN_PROGRESS:
            reply = stored[-1]
            break
        await asyncio.sleep(0.025)
    assert reply is not None, "the reply never left IN_PROGRESS"
    assert reply.role == thread_pb2.ROLE_ASSISTANT
    assert reply.status == thread_pb2.MESSAGE_STATUS_INCOMPLETE
    assert reply.content == ""
    assert len(llm.requests) == 1  # the cancelled reply is not retried

    after = await api.send(content="still there?", thread_id=thread_id)
    assert after[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    assert after[-1].completed.message.sequence == 5
    assert [m.sequence for m in await _messages(api, thread_id)] == list(range(6))
    assert await _message_count(api, thread_id) == 6


# --------------------------------------------------------- FAILED_PRECONDITION


async def test_no_model_configured_is_failed_precondition(ferretdb: FerretDB) -> None:
    server: Loom = await start_loom(
        make_settings(
            ferretdb, None, llm_base_url=None, llm_api_key=None, mongodb_db="loom_nomodel"
        )
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api(channel, await new_tenant_key(server))
            error = await _expect(
                api.threads.SendMessage(
                    thread_pb2.SendMessageRequest(content="hello"), metadata=api.metadata
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "MODEL_NOT_CONFIGURED",
            )
            assert "LOOM_LLM_BASE_URL" in error.details()
            assert await _thread_ids(api) == []
            # Everything that needs no model still works.
            created = await api.call(
                api.threads.CreateThread, thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread())
            )
            thread_id = created.thread.thread_id
            await _expect(
                api.threads.SendMessage(
                    thread_pb2.SendMessageRequest(content="hello", thread_id=thread_id),
                    metadata=api.metadata,
                ),
                grpc.StatusCode.FAILED_PRECONDITION,
                "MODEL_NOT_CONFIGURED",
            )
            assert await _messages(api, thread_id) == []
            # Validation still comes first.
            await _expect(
                api.threads.SendMessage(
                    thread_pb2.SendMessageRequest(content=" "), metadata=api.metadata
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_ARGUMENT",
                field="content",
            )
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user_id": "u" * 257}, "user_id"),
        ({"model": "m" * 257}, "model"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"a.b": "v"}}, "metadata"),
        ({"content": "nul \x00 inside"}, "content"),
    ],
)
async def test_send_with_a_field_over_its_limit_is_invalid_and_leaves_nothing(
    api: Api, llm: ScriptedLLM, fields: dict[str, Any], field: str
) -> None:
    request = {"content": "hello", **fields}
    await _expect(
        api.threads.SendMessage(thread_pb2.SendMessageRequest(**request), metadata=api.metadata),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field=field,
    )
    assert await _thread_ids(api) == []
    assert await _assistant_ids(api) == []
    assert llm.requests == []


@pytest.mark.parametrize(
    ("thread", "field"),
    [
        ({"user_id": "u" * 257}, "user_id"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"$where": "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
    ],
)
async def test_create_thread_with_a_field_over_its_limit_is_invalid(
    api: Api, thread: dict[str, Any], field: str
) -> None:
    await _expect(
        api.call(
            api.threads.CreateThread,
            thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(**thread)),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        field=field,
    )
    assert await _thread_ids(api) == []


async def test_database_down_is_unavailable_with_a_clear_message(llm: ScriptedLLM) -> None:
    database = FerretDB().start()
    server = await start_loom(make_settings(database, llm, mongodb_db="loom_db_down"))
    try:
        key = await new_tenant_key(server)
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api(channel, key)
            await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
            database.stop()
            error = await expect_error(
                api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest()),
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            )
            assert "database" in error.details()
            assert "Traceback" not in error.details()
    finally:
        database.stop()
        await server.stop(0)


def test_a_long_message_is_cut_to_fit_the_trailers() -> None:
    """A status message quoting a caller's long input is cut, so that the
    status (sent twice in trailers) stays under a client's metadata limit."""
    from urllib.parse import quote

    from google.rpc import status_pb2

    from service.api.errors import MAX_MESSAGE_BYTES, caller_message, status_details
    from service.core.errors import InvalidArgument

    for long in ("x" * 100_000, "\u20ac" * 5000, "%" * 5000):
        error = InvalidArgument(long)
        sent = caller_message(error)
        assert sent.endswith("(cut off)")
        assert len(quote(sent, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")) <= MAX_MESSAGE_BYTES
        status = status_pb2.Status.FromString(
            status_details(grpc.StatusCode.INVALID_ARGUMENT, error)
        )
        assert status.message == sent
    short = InvalidArgument("page_size must not be negative")
    assert caller_message(short) == short.message
