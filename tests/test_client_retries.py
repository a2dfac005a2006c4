"""The Python client's retries against the real service: UNAVAILABLE is sent
again with back-off, and ``send_message`` stays safe because every attempt
carries the same ``request_id``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from loom_client import AsyncLoom, Loom
from loom_client.errors import Unavailable
from loom_client.types import Event, MessageStatus, Reply, Role, Started, TextDelta
from service.server import Loom as LoomServer
from tests.conftest import new_tenant_key
from tests.scripted_llm import Fail, ScriptedLLM
from tests.scripted_llm import Reply as Scripted
from tests.support.proxy import CuttingProxy


@pytest.fixture
async def proxy(loom: LoomServer) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy(loom.port) as cutting:
        yield cutting


async def test_a_stream_cut_after_started_is_sent_again_and_stored_once(
    loom: LoomServer, llm: ScriptedLLM, proxy: CuttingProxy
) -> None:
    llm.script(Scripted(text="alpha beta gamma delta epsilon zeta eta theta", chunk_delay=0.15))
    events: list[Event] = []
    async with AsyncLoom(proxy.address, api_key=await new_tenant_key(loom)) as client:
        async for event in client.stream_message("Tell me a long story."):
            events.append(event)
            if isinstance(event, TextDelta):
                proxy.cut()  # after `started` and the first text: the connection dies
        reply = events[-1]
        assert isinstance(reply, Reply)
        messages = [m async for m in client.threads.messages(reply.thread_id)]

    assert proxy.accepted >= 2  # the first connection, cut, and the retry's
    assert [type(e) for e in events].count(Started) == 1
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    # The retry replayed the reply as stored when the cut stopped it; the
    # caller got each piece of its text once.
    assert reply.status is MessageStatus.INCOMPLETE
    assert text == reply.content
    assert reply.content.startswith("alpha")
    assert [(m.role, m.status) for m in messages] == [
        (Role.USER, MessageStatus.COMPLETE),
        (Role.ASSISTANT, MessageStatus.INCOMPLETE),
    ]
    assert messages[1].message_id == reply.message_id
    assert len(llm.requests) == 1  # the model was asked once


async def test_a_reply_whose_model_failed_is_retried_into_the_same_slot(
    loom: LoomServer, llm: ScriptedLLM
) -> None:
    # Loom tries the model 3 times (LOOM_LLM_MAX_RETRIES=2), then answers
    # UNAVAILABLE (MODEL_UNAVAILABLE) before any text; the client sends again
    # with the same request_id, and Loom runs the model in the same slot.
    llm.script(*(Fail(status=503) for _ in range(3)))
    key = await new_tenant_key(loom)
    with Loom(f"127.0.0.1:{loom.port}", api_key=key) as client:
        reply = await asyncio.to_thread(client.send_message, "Are you there?")
        messages = await asyncio.to_thread(lambda: list(client.threads.messages(reply.thread_id)))
    assert reply.status is MessageStatus.COMPLETE
    assert reply.content == "Echo: Are you there?"
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT]
    assert messages[1].message_id == reply.message_id
    assert len(llm.requests) == 4


async def test_calls_wait_for_a_server_that_turns_connections_away(
    loom: LoomServer, llm: ScriptedLLM, proxy: CuttingProxy
) -> None:
    proxy.refuse(2)
    async with AsyncLoom(proxy.address, api_key=await new_tenant_key(loom)) as client:
        reply = await client.send_message("Hello?")
        assert proxy.accepted >= 3
        proxy.refuse(2)
        thread = await client.threads.get(reply.thread_id)
    assert reply.content == "Echo: Hello?"
    assert thread.message_count == 2


async def test_unavailable_past_the_retry_budget_is_raised(
    loom: LoomServer, proxy: CuttingProxy
) -> None:
    proxy.refuse(1000)
    key = await new_tenant_key(loom)
    async with AsyncLoom(proxy.address, api_key=key, max_retries=2) as client:
        with pytest.raises(Unavailable) as caught:
            await client.send_message("Hello?")
        with pytest.raises(Unavailable):
            await client.threads.list().__anext__()
    assert caught.value.reason == ""  # the channel's own error: Loom was never reached
    assert proxy.accepted >= 1
