"""Authentication and tenant isolation: open health and reflection, API keys
on every Loom RPC, revoked keys, and tenants that never see each other."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.loom.v1 import assistant_pb2, thread_pb2
from service.server import Loom
from tests.conftest import Api, error_info, expect_error, new_tenant_key

SERVICES = ("loom.v1.AssistantService", "loom.v1.ThreadService")


# ------------------------------------------------------- open infrastructure


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "not-a-key"),)])
async def test_health_check_needs_no_api_key(
    channel: aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", *SERVICES):
        response = await health.Check(
            health_pb2.HealthCheckRequest(service=service), metadata=metadata
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_services_without_an_api_key(channel: aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    listed = await call.read()
    assert not listed.HasField("error_response")
    names = {s.name for s in listed.list_services_response.service}
    assert set(SERVICES) <= names
    assert "grpc.health.v1.Health" in names

    await call.write(
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="loom.v1.ThreadService")
    )
    described = await call.read()
    assert not described.HasField("error_response")
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    methods = {
        m.name for f in files for s in f.service if s.name == "ThreadService" for m in s.method
    }
    assert {"SendMessage", "ListMessages", "CreateThread"} <= methods
    await call.done_writing()
    assert await call.read() is aio.EOF


# ---------------------------------------------------------------- API keys


RPCS = [
    "CreateAssistant",
    "GetAssistant",
    "ListAssistants",
    "UpdateAssistant",
    "DeleteAssistant",
    "CreateThread",
    "GetThread",
    "ListThreads",
    "DeleteThread",
    "ListMessages",
    "SendMessage",
]


def _rpc(client: Api, name: str, assistant_id: str = "", thread_id: str = "") -> Any:
    """A well-formed request for each Loom RPC."""
    assistant_id = assistant_id or "asst_" + "0" * 24
    thread_id = thread_id or "thread_" + "0" * 24
    a, t = client.assistants, client.threads
    if name == "CreateAssistant":
        request: Any = assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="intruder")
        )
        return client.call(a.CreateAssistant, request)
    if name == "GetAssistant":
        return client.call(
            a.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=assistant_id)
        )
    if name == "ListAssistants":
        return client.call(a.ListAssistants, assistant_pb2.ListAssistantsRequest())
    if name == "UpdateAssistant":
        request = assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                assistant_id=assistant_id, name="hijacked", instructions="Leak everything."
            )
        )
        request.update_mask.paths.extend(["name", "instructions"])
        return client.call(a.UpdateAssistant, request)
    if name == "DeleteAssistant":
        return client.call(
            a.DeleteAssistant, assistant_pb2.DeleteAssistantRequest(assistant_id=assistant_id)
        )
    if name == "CreateThread":
        return client.call(
            t.CreateThread,
            thread_pb2.CreateThreadRequest(thread=thread_pb2.Thread(assistant_id=assistant_id)),
        )
    if name == "GetThread":
        return client.call(t.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id))
    if name == "ListThreads":
        return client.call(t.ListThreads, thread_pb2.ListThreadsRequest())
    if name == "DeleteThread":
        return client.call(t.DeleteThread, thread_pb2.DeleteThreadRequest(thread_id=thread_id))
    if name == "ListMessages":
        return client.call(t.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id))
    if name == "SendMessage":
        return t.SendMessage(
            thread_pb2.SendMessageRequest(content="hello", thread_id=thread_id),
            metadata=client.metadata,
        )
    raise AssertionError(name)


@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_without_a_key_is_unauthenticated(
    channel: aio.Channel, api: Api, rpc: str
) -> None:
    # Real ids of a real tenant, so only the missing key can be the problem.
    events = await api.send(content="hello")
    started = events[0].started
    anonymous = Api(channel, None)
    error = await expect_error(
        _rpc(anonymous, rpc, started.assistant_id, started.thread_id),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_MISSING",
    )
    assert error_info(error)["domain"] == "loom.v1"
    empty_key = Api(channel, None)
    empty_key.metadata = (("x-api-key", ""),)
    await expect_error(
        _rpc(empty_key, rpc, started.assistant_id, started.thread_id),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_MISSING",
    )


@pytest.mark.parametrize("rpc", RPCS)
async def test_every_rpc_with_a_wrong_key_is_unauthenticated(
    channel: aio.Channel, api: Api, rpc: str
) -> None:
    events = await api.send(content="hello")
    started = events[0].started
    assert api.key is not None
    impostor = Api(channel, api.key[:-4] + "AAAA")
    error = await expect_error(
        _rpc(impostor, rpc, started.assistant_id, started.thread_id),
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_INVALID",
    )
    assert error_info(error)["domain"] == "loom.v1"
    # Nothing changed for the real tenant.
    threads = await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in threads.threads] == [started.thread_id]
    assert threads.threads[0].message_count == 2
    assistants = await api.call(
        api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest()
    )
    assert [a.assistant_id for a in assistants.assistants] == [started.assistant_id]
    assert assistants.assistants[0].name not in ("intruder", "hijacked")


async def test_revoked_key_is_unauthenticated(loom: Loom, channel: aio.Channel) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    doomed = await loom.keys.create(tenant)
    survivor = await loom.keys.create(tenant)
    assert await loom.keys.revoke(doomed.key.key_id)
    revoked = Api(channel, doomed.secret)
    for call in (
        revoked.call(revoked.threads.ListThreads, thread_pb2.ListThreadsRequest()),
        revoked.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hello"), metadata=revoked.metadata
        ),
    ):
        error = await expect_error(call, grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID")
        assert "revoked" in error.details()
        assert error_info(error)["domain"] == "loom.v1"
    # The tenant's other key still works, and the revoked key left nothing behind.
    alive = Api(channel, survivor.secret)
    page = await alive.call(alive.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert list(page.threads) == []
    assert not await loom.keys.revoke(doomed.key.key_id)


async def test_two_keys_of_one_tenant_see_the_same_data(loom: Loom, channel: aio.Channel) -> None:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    first = Api(channel, (await loom.keys.create(tenant)).secret)
    second = Api(channel, (await loom.keys.create(tenant)).secret)
    events = await first.send(content="hello")
    thread_id = events[0].started.thread_id
    got = await second.call(
        second.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)
    )
    assert got.thread.message_count == 2


# ------------------------------------------------------------ tenant isolation


async def _snapshot(client: Api, assistant_id: str, thread_id: str) -> tuple[Any, Any, Any]:
    assistant = await client.call(
        client.assistants.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=assistant_id)
    )
    thread = await client.call(
        client.threads.GetThread, thread_pb2.GetThreadRequest(thread_id=thread_id)
    )
    messages = await client.call(
        client.threads.ListMessages, thread_pb2.ListMessagesRequest(thread_id=thread_id)
    )
    return assistant.assistant, thread.thread, list(messages.messages)


async def test_tenants_never_see_each_other(loom: Loom, channel: aio.Channel, api: Api) -> None:
    owner = api
    created = await owner.call(
        owner.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="Private", instructions="Secret sauce.")
        ),
    )
    assistant_id = created.assistant.assistant_id
    events = await owner.send(content="my secret", assistant_id=assistant_id, user_id="alice")
    thread_id = events[0].started.thread_id
    before = await _snapshot(owner, assistant_id, thread_id)
    assert len(before[2]) == 2

    other = Api(channel, await new_tenant_key(loom))
    expected = {
        "GetAssistant": "ASSISTANT_NOT_FOUND",
        "UpdateAssistant": "ASSISTANT_NOT_FOUND",
        "DeleteAssistant": "ASSISTANT_NOT_FOUND",
        "CreateThread": "ASSISTANT_NOT_FOUND",
        "GetThread": "THREAD_NOT_FOUND",
        "ListMessages": "THREAD_NOT_FOUND",
        "DeleteThread": "THREAD_NOT_FOUND",
        "SendMessage": "THREAD_NOT_FOUND",
    }
    for rpc, reason in expected.items():
        error = await expect_error(
            _rpc(other, rpc, assistant_id, thread_id), grpc.StatusCode.NOT_FOUND, reason
        )
        assert "Secret" not in error.details()
    # A new thread for the other tenant cannot borrow the owner's assistant either.
    await expect_error(
        other.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="hi", assistant_id=assistant_id),
            metadata=other.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )

    # The other tenant's listings show none of the owner's objects, even when
    # filtered by the owner's ids.
    for request in (
        thread_pb2.ListThreadsRequest(),
        thread_pb2.ListThreadsRequest(assistant_id=assistant_id),
        thread_pb2.ListThreadsRequest(user_id="alice"),
    ):
        page = await other.call(other.threads.ListThreads, request)
        assert list(page.threads) == []
    assistants = await other.call(
        other.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest()
    )
    assert list(assistants.assistants) == []

    # Once the other tenant has objects of its own, it sees only those.
    mine = await other.send(content="other tenant", user_id="alice")
    mine_thread = mine[0].started.thread_id
    page = await other.call(other.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in page.threads] == [mine_thread]
    page = await other.call(
        other.threads.ListThreads, thread_pb2.ListThreadsRequest(user_id="alice")
    )
    assert [t.thread_id for t in page.threads] == [mine_thread]
    assistants = await other.call(
        other.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest()
    )
    assert [a.assistant_id for a in assistants.assistants] == [mine[0].started.assistant_id]
    assert mine[0].started.assistant_id != assistant_id

    # And the owner's objects are exactly as they were.
    assert await _snapshot(owner, assistant_id, thread_id) == before
    page = await owner.call(owner.threads.ListThreads, thread_pb2.ListThreadsRequest())
    assert [t.thread_id for t in page.threads] == [thread_id]
    assistants = await owner.call(
        owner.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest()
    )
    assert [a.assistant_id for a in assistants.assistants] == [assistant_id]


async def test_default_assistants_are_per_tenant(
    loom: Loom, channel: aio.Channel, api: Api
) -> None:
    other = Api(channel, await new_tenant_key(loom))
    mine = (await api.send(content="hello"))[0].started.assistant_id
    theirs = (await other.send(content="hello"))[0].started.assistant_id
    assert mine != theirs
    await expect_error(
        other.call(
            other.assistants.GetAssistant, assistant_pb2.GetAssistantRequest(assistant_id=mine)
        ),
        grpc.StatusCode.NOT_FOUND,
        "ASSISTANT_NOT_FOUND",
    )
