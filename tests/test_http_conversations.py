"""The Conversations API of the HTTP door and what every endpoint shares,
driven by OpenAI's Python SDK (and, where the SDK would hide the wire, a
plain HTTP client): conversations are Loom threads, items are their
messages, listed page by page; keys, tenants and call limits are the gRPC
door's; errors come in OpenAI's shape."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import openai
import pytest

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.config import Settings
from service.server import Loom
from service.transport import receive_limit
from tests.conftest import Api, eventually
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.openai_http import base_url, converse, openai_for

MODEL = "scripted-model"
MISSING = "thread_000000000000000000000000"


@pytest.fixture
async def client(loom: Loom, api: Api, llm: ScriptedLLM) -> Any:
    llm.set_default(converse)
    async with openai_for(loom, str(api.key)) as sdk:
        yield sdk


async def test_a_conversation_is_a_loom_thread(client: openai.AsyncOpenAI, api: Api) -> None:
    created = await client.conversations.create(metadata={"topic": "billing"})
    assert created.object == "conversation"
    assert created.metadata == {"topic": "billing"}
    assert created.created_at > 0
    # The same object through the gRPC door, under the same id.
    thread = await api.call(
        api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=created.id)
    )
    assert thread.thread.metadata == {"topic": "billing"}
    fetched = await client.conversations.retrieve(created.id)
    assert (fetched.id, fetched.metadata) == (created.id, {"topic": "billing"})
    deleted = await client.conversations.delete(created.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (
        created.id,
        True,
        "conversation.deleted",
    )
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(created.id)


async def test_metadata_names_the_assistant_and_the_user(
    client: openai.AsyncOpenAI, api: Api
) -> None:
    made = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="Support")),
    )
    assistant_id = made.assistant.assistant_id
    created = await client.conversations.create(
        metadata={"assistant_id": assistant_id, "user_id": "alice"}
    )
    listed = await api.call(
        api.threads.ListThreads,
        thread_pb2.ListThreadsRequest(assistant_id=assistant_id, user_id="alice"),
    )
    assert [t.thread_id for t in listed.threads] == [created.id]
    with pytest.raises(openai.NotFoundError) as caught:
        await client.conversations.create(
            metadata={"assistant_id": "asst_000000000000000000000000"}
        )
    assert caught.value.code == "assistant_not_found"


async def test_items_are_the_thread_s_messages_page_by_page(client: openai.AsyncOpenAI) -> None:
    conversation = await client.conversations.create()
    for text in ("one", "two", "three"):
        await client.responses.create(model=MODEL, input=text, conversation=conversation.id)
    newest_first = await client.conversations.items.list(conversation.id)
    texts = [item.content[0].text for item in newest_first.data]  # type: ignore[union-attr]
    assert texts == [
        "You said: three", "three", "You said: two", "two", "You said: one", "one"
    ]  # fmt: skip
    assert [i.role for i in newest_first.data[:2]] == ["assistant", "user"]  # type: ignore[union-attr]
    oldest_first = await client.conversations.items.list(conversation.id, order="asc", limit=4)
    assert [i.id for i in oldest_first.data] == [i.id for i in newest_first.data][::-1][:4]
    assert oldest_first.has_more is True
    # The SDK's own pagination follows `after` across pages of one.
    paged = [item.id async for item in client.conversations.items.list(conversation.id, limit=1)]
    assert paged == [i.id for i in newest_first.data]
    one = await client.conversations.items.retrieve(
        newest_first.data[1].id, conversation_id=conversation.id
    )
    assert one.id == newest_first.data[1].id
    assert one.type == "message"


async def test_an_item_of_another_conversation_or_none_is_not_found(
    client: openai.AsyncOpenAI,
) -> None:
    first = await client.conversations.create()
    other = await client.conversations.create()
    made = await client.responses.create(model=MODEL, input="Hi", conversation=first.id)
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(made.output[0].id, conversation_id=other.id)  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.retrieve(
            "msg_000000000000000000000000", conversation_id=first.id
        )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.list(first.id, after="msg_000000000000000000000000")
    assert caught.value.param == "after"


async def test_a_conversation_created_with_items_holds_them_and_answers_from_them(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    requests = len(llm.requests)
    conversation = await client.conversations.create(
        items=[
            {"type": "message", "role": "developer", "content": "Be brief."},
            {"type": "message", "role": "user", "content": "My favorite color is red."},
            {"type": "message", "role": "assistant", "content": "Noted."},
        ],
        metadata={"topic": "colors"},
    )
    assert conversation.metadata == {"topic": "colors"}
    listed = await client.conversations.items.list(conversation.id, order="asc")
    assert [(i.role, i.content[0].text) for i in listed.data] == [  # type: ignore[union-attr]
        ("system", "Be brief."),
        ("user", "My favorite color is red."),
        ("assistant", "Noted."),
    ]
    assert len(llm.requests) == requests  # stored without a reply
    reply = await client.responses.create(
        model=MODEL, input="What did I say?", conversation=conversation.id
    )
    assert reply.output_text == "You told me: My favorite color is red."


async def test_a_conversation_whose_items_cannot_be_stored_is_not_created(
    client: openai.AsyncOpenAI, api: Api
) -> None:
    before = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.create(
            items=[
                {"type": "message", "role": "user", "content": "Hi"},
                {"type": "function_call_output", "call_id": "call_9", "output": "{}"},
            ]
        )
    assert caught.value.param == "items[1].tool_call_id"
    assert "answers no tool call" in caught.value.message
    after = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in after.threads] == [t.thread_id for t in before.threads]


async def test_items_added_to_a_conversation_are_stored_without_a_reply(
    client: openai.AsyncOpenAI, llm: ScriptedLLM
) -> None:
    conversation = await client.conversations.create()
    requests = len(llm.requests)
    added = await client.conversations.items.create(
        conversation.id,
        items=[
            {"type": "message", "role": "user", "content": "Weather in Paris?"},
            {"type": "message", "role": "assistant", "content": "Let me look."},
            {
                "type": "function_call",
                "call_id": "call_7",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_7", "output": '{"forecast": "dry"}'},
        ],
    )
    assert len(llm.requests) == requests  # nothing reached the model
    assert added.object == "list"
    assert [i.type for i in added.data] == [
        "message", "message", "function_call", "function_call_output"
    ]  # fmt: skip
    assert added.has_more is False
    assert (added.first_id, added.last_id) == (added.data[0].id, added.data[-1].id)
    call = added.data[2]
    assert (call.call_id, call.name, call.arguments) == (  # type: ignore[union-attr]
        "call_7", "get_weather", '{"city": "Paris"}'
    )  # fmt: skip
    listed = await client.conversations.items.list(conversation.id, order="asc")
    assert [i.id for i in listed.data] == [i.id for i in added.data]
    for item in added.data:
        fetched = await client.conversations.items.retrieve(
            item.id, conversation_id=conversation.id
        )
        assert fetched.type == item.type
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.create(
            MISSING, items=[{"type": "message", "role": "user", "content": "Hi"}]
        )


async def test_a_conversation_s_metadata_is_replaced(client: openai.AsyncOpenAI, api: Api) -> None:
    conversation = await client.conversations.create(
        metadata={"topic": "billing", "user_id": "alice"}
    )
    updated = await client.conversations.update(
        conversation.id, metadata={"topic": "refunds", "user_id": "alice"}
    )
    assert (updated.id, updated.metadata) == (
        conversation.id,
        {"topic": "refunds", "user_id": "alice"},
    )
    thread = await api.call(
        api.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=conversation.id)
    )
    assert dict(thread.thread.metadata) == {"topic": "refunds", "user_id": "alice"}
    assert thread.thread.user_id == "alice"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.update(conversation.id, metadata={"user_id": "bob"})
    assert caught.value.param == "metadata.user_id"
    cleared = await client.conversations.update(conversation.id, metadata=None)
    assert cleared.metadata == {}
    with pytest.raises(openai.NotFoundError):
        await client.conversations.update(MISSING, metadata={"topic": "x"})


async def test_items_cannot_be_deleted(client: openai.AsyncOpenAI) -> None:
    conversation = await client.conversations.create()
    made = await client.responses.create(model=MODEL, input="Keep me", conversation=conversation.id)
    item_id = made.output[0].id  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError) as caught:
        await client.conversations.items.delete(item_id, conversation_id=conversation.id)
    assert "append-only" in caught.value.message
    still = await client.conversations.items.list(conversation.id)
    assert item_id in [i.id for i in still.data]


async def test_unknown_conversations_are_not_found(client: openai.AsyncOpenAI) -> None:
    for conversation_id in (MISSING, "conv_123"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.conversations.retrieve(conversation_id)
        assert caught.value.body == {
            "message": f"conversation {conversation_id!r} not found",
            "type": "invalid_request_error",
            "param": None,
            "code": "thread_not_found",
        }
        with pytest.raises(openai.NotFoundError):
            await client.conversations.items.list(conversation_id)
        with pytest.raises(openai.NotFoundError):
            await client.conversations.delete(conversation_id)


async def test_a_bad_or_missing_key_is_401(loom: Loom) -> None:
    async with openai_for(loom, "loom_nope_nope") as stranger:
        with pytest.raises(openai.AuthenticationError) as caught:
            await stranger.conversations.create()
    assert caught.value.status_code == 401
    assert caught.value.code == "api_key_invalid"
    async with httpx.AsyncClient(base_url=base_url(loom)) as http:
        answer = await http.post("/conversations", json={})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "api_key_missing"
    assert "Authorization: Bearer" in answer.json()["error"]["message"]


async def _limited_key(loom: Loom, **limits: Any) -> str:
    """A key of a new tenant whose limits are lowered before its first call."""
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    key = (await loom.keys.create(tenant)).secret
    await loom.keys.set_limits(tenant, **limits)
    return key


async def test_over_the_call_rate_is_429_with_retry_after(loom: Loom) -> None:
    key = await _limited_key(loom, rate=0.5, burst=2)
    async with openai_for(loom, key) as limited:
        await limited.conversations.create()
        await limited.conversations.create()
        with pytest.raises(openai.RateLimitError) as caught:
            await limited.conversations.create()
    assert caught.value.code == "rate_limited"
    retry_after = caught.value.response.headers["retry-after"]
    assert 1 <= int(retry_after) <= 2
    assert int(caught.value.response.headers["retry-after-ms"]) > 0


async def test_over_the_tenant_s_streams_is_429(loom: Loom, llm: ScriptedLLM) -> None:
    key = await _limited_key(loom, streams=1)
    llm.script(Reply(text="slow and steady", chunk_delay=0.3))
    async with openai_for(loom, key) as limited:
        stream = await limited.responses.create(model=MODEL, input="Take your time", stream=True)
        events = aiter(stream)
        assert (await anext(events)).type == "response.created"
        with pytest.raises(openai.RateLimitError) as caught:
            await limited.responses.create(model=MODEL, input="Me too")
        assert caught.value.code == "too_many_streams"
        assert caught.value.response.headers["retry-after"] == "1"
        assert [e.type async for e in events][-1] == "response.completed"
    tenant = (await loom.keys.authenticate(key)).tenant
    assert await eventually(lambda: loom.limiter.open_streams(tenant) == 0)


async def test_paths_and_methods_outside_the_api_are_openai_errors(loom: Loom, api: Api) -> None:
    headers = {"Authorization": f"Bearer {api.key}"}
    async with httpx.AsyncClient(base_url=base_url(loom), headers=headers) as http:
        missing = await http.get("/assistants")
        wrong = await http.put("/conversations/x")
        garbled = await http.post("/conversations", content=b"{not json")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert wrong.status_code == 405
    assert wrong.json()["error"]["type"] == "invalid_request_error"
    assert garbled.status_code == 400
    assert "not valid JSON" in garbled.json()["error"]["message"]


def test_the_door_is_off_unless_asked_and_plaintext_only_on_loopback() -> None:
    assert Settings().http_listen is None
    assert Settings(http_listen="").http_listen is None
    with pytest.raises(ValueError, match=r"LOOM_HTTP_LISTEN=0\.0\.0\.0:8080 is not a loopback"):
        Settings(http_listen="0.0.0.0:8080")
    assert Settings(http_listen="0.0.0.0:8080", allow_plaintext=True).http_listen
    with pytest.raises(ValueError, match="host:port"):
        Settings(http_listen="8080")


async def test_a_body_past_the_receive_limit_is_refused(loom: Loom, api: Api) -> None:
    limit = receive_limit(loom.settings.max_message_chars)
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    body = b'{"metadata": {"x": "' + b"y" * limit + b'"}}'
    async with httpx.AsyncClient(base_url=base_url(loom), headers=headers, timeout=30) as http:
        answer = await http.post("/conversations", content=body)
    assert answer.status_code == 400
    assert f"larger than {limit:,} bytes" in answer.json()["error"]["message"]
