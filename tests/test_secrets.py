"""Secrets: API keys stored as digests only; a revoked key refused by every
replica within the key cache's time; and no key, message content, tool
argument or output, or memory text in the logs or the exported telemetry of
a full scenario run with LOOM_LOG_LEVEL=DEBUG: every RPC of the contract,
and refused calls whose bad input carries a secret."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc import aio

from generated.loom.v1 import (
    assistant_pb2,
    assistant_pb2_grpc,
    common_pb2,
    memory_pb2,
    memory_pb2_grpc,
    thread_pb2,
    thread_pb2_grpc,
    tools_pb2,
)
from service.core.keys import CACHE_SECONDS
from service.server import Loom
from tests.conftest import MODEL_DIR, Api, expect_error, make_settings, start_loom
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB, free_port
from tests.support.process import LoomProcess, clean_env

# ------------------------------------------------------------- keys at rest


async def test_keys_are_stored_as_sha256_digests_only(loom: Loom) -> None:
    created = await loom.keys.create("digest-check")
    stored = await loom.store.db["api_keys"].find_one({"_id": created.key.key_id})
    assert stored is not None
    assert stored["digest"] == hashlib.sha256(created.secret.encode()).hexdigest()
    text = repr(stored)
    secret_part = created.secret.split("_", 2)[2]
    assert created.secret not in text
    assert secret_part[:12] not in text


# ------------------------------------------------------------- revocation


async def _threads(api: Api) -> Any:
    return await api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest())


async def _accepted(api: Api) -> bool:
    """Whether the key is accepted; False when UNAUTHENTICATED."""
    try:
        await _threads(api)
    except aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise
        return False
    return True


async def test_a_revoked_key_is_refused_by_every_replica_within_the_cache_time(
    loom: Loom, channel: aio.Channel, ferretdb: FerretDB, llm: ScriptedLLM
) -> None:
    replica = await start_loom(make_settings(ferretdb, llm, mongodb_db=loom.settings.mongodb_db))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{replica.port}") as other:
            created = await loom.keys.create("revoke-check")
            apis = [Api(channel, created.secret), Api(other, created.secret)]
            for api in apis:  # both replicas have verified (and cached) the key
                await _threads(api)
            assert await loom.keys.revoke(created.key.key_id)
            revoked = time.monotonic()
            serving = set(range(len(apis)))
            while serving and time.monotonic() - revoked < CACHE_SECONDS + 5:
                serving = {i for i in serving if await _accepted(apis[i])}
                await asyncio.sleep(0.2)
            assert not serving, f"replicas {sorted(serving)} still accept the revoked key"
            for api in apis:
                await expect_error(_threads(api), grpc.StatusCode.UNAUTHENTICATED)
    finally:
        await replica.stop(0)


# ----------------------------------------------- never in logs or telemetry


def _mark(what: str) -> str:
    """A word that appears nowhere unless the scenario put it there."""
    return f"{what}{secrets.token_hex(6)}"


class Marks:
    """The secrets of the scenario: each must never reach Loom's output."""

    def __init__(self) -> None:
        self.key = "loom_dev_" + secrets.token_urlsafe(24)
        self.wrong_key = "loom_bad_" + secrets.token_urlsafe(24)
        self.instructions = _mark("instr")
        self.content = _mark("passport")
        self.argument = _mark("order")
        self.output = _mark("parcel")
        self.reply = _mark("reply")
        self.fact = _mark("allergy")
        self.memory = _mark("manual")
        self.query = _mark("query")
        self.second = _mark("followup")
        self.edited = _mark("edited")
        self.renamed = _mark("renamed")
        self.refused = _mark("refused")
        self.imported = _mark("imported")
        self.batch = _mark("batch")

    def all(self) -> dict[str, str]:
        return dict(vars(self))


def _route(marks: Marks) -> Any:
    """The model: a tool call, then a reply; facts for extraction; 'add' for
    reconciliation."""

    def route(body: dict[str, Any]) -> Reply:
        messages = body["messages"]
        system = str(messages[0]["content"]) if messages[0]["role"] == "system" else ""
        if "From the exchange below" in system:
            return Reply(
                text=json.dumps({"facts": [f"The user has a food allergy: {marks.fact}."]})
            )
        if "For each new fact" in system:
            return Reply(text='{"operations": [{"fact": 0, "action": "add"}]}')
        if (
            body.get("tools")
            and messages[-1]["role"] == "user"
            and marks.content in str(messages[-1]["content"])
        ):
            call = {"id": "call_1", "name": "lookup_order", "arguments": {"order": marks.argument}}
            return Reply(text="", tool_calls=[call])
        return Reply(text=f"Done: {marks.reply}.")

    return route


LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "description": "Find an order.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}


def _settled(memory: memory_pb2_grpc.MemoryServiceStub, md: Any, operation_id: str) -> None:
    done = (memory_pb2.MemoryOperation.STATE_SUCCEEDED, memory_pb2.MemoryOperation.STATE_FAILED)
    for _ in range(600):
        got = memory.GetMemoryOperation(
            memory_pb2.GetMemoryOperationRequest(operation_id=operation_id), metadata=md
        )
        if got.operation.state in done:
            assert got.operation.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
            return
        time.sleep(0.05)
    raise AssertionError(f"operation {operation_id} never finished")


def _scenario(address: str, marks: Marks) -> None:
    """Memory AUTO, a tool round, recall, search, a memory written by hand,
    and a call with a wrong key."""
    md = (("x-api-key", marks.key),)
    with grpc.insecure_channel(address) as channel:
        assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        threads = thread_pb2_grpc.ThreadServiceStub(channel)
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        assistant = assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name="Support",
                    instructions=f"Be brief. {marks.instructions}",
                    memory_mode=common_pb2.MEMORY_MODE_AUTO,
                    tools=[json_format.ParseDict(LOOKUP, tools_pb2.Tool())],
                )
            ),
            metadata=md,
        ).assistant
        send = thread_pb2.SendMessageRequest(
            content=f"Where is my order? My passport is {marks.content}.",
            assistant_id=assistant.assistant_id,
            user_id="u1",
        )
        events = list(threads.SendMessage(send, metadata=md, timeout=30))
        required = events[-1].tool_calls_required
        assert required.tool_calls, events[-1]
        submit = thread_pb2.SubmitToolOutputsRequest(
            thread_id=events[0].started.thread_id,
            run_id=required.run_id,
            tool_outputs=[tools_pb2.ToolOutput(tool_call_id="call_1", output=marks.output)],
        )
        done = list(threads.SubmitToolOutputs(submit, metadata=md, timeout=30))[-1].completed
        assert marks.reply in done.message.content
        _settled(memory, md, done.memory_operation_id)
        again = thread_pb2.SendMessageRequest(
            content=f"What food allergy do I have? {marks.second}",
            assistant_id=assistant.assistant_id,
            user_id="u1",
        )
        recalled = [
            e for e in threads.SendMessage(again, metadata=md, timeout=30) if e.HasField("memory")
        ]
        assert any(marks.fact in m.content for e in recalled for m in e.memory.memories)
        found = memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(
                assistant_id=assistant.assistant_id,
                query=f"food allergy {marks.query}",
                user_id="u1",
            ),
            metadata=md,
        )
        assert any(marks.fact in r.memory.content for r in found.results)
        memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    assistant_id=assistant.assistant_id, content=f"Prefers {marks.memory}."
                )
            ),
            metadata=md,
        )
        with pytest.raises(grpc.RpcError) as caught:
            threads.ListThreads(
                thread_pb2.ListThreadsRequest(), metadata=(("x-api-key", marks.wrong_key),)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        _every_other_rpc(channel, marks, assistant.assistant_id, events[0].started.thread_id)


def _every_other_rpc(
    channel: grpc.Channel, marks: Marks, assistant_id: str, thread_id: str
) -> None:
    """The RPCs the scenario above has not called, with secrets in what
    they read and write, and refused calls whose bad input holds one."""
    md = (("x-api-key", marks.key),)
    assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
    threads = thread_pb2_grpc.ThreadServiceStub(channel)
    memory = memory_pb2_grpc.MemoryServiceStub(channel)
    assistants.GetAssistant(
        assistant_pb2.GetAssistantRequest(assistant_id=assistant_id), metadata=md
    )
    assistants.ListAssistants(assistant_pb2.ListAssistantsRequest(), metadata=md)
    assistants.UpdateAssistant(
        assistant_pb2.UpdateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                assistant_id=assistant_id, instructions=f"Be kind. {marks.renamed}"
            ),
            update_mask={"paths": ["instructions"]},
        ),
        metadata=md,
    )
    threads.GetThread(thread_pb2.GetThreadRequest(thread_id=thread_id), metadata=md)
    threads.ListMessages(thread_pb2.ListMessagesRequest(thread_id=thread_id), metadata=md)
    made = threads.CreateThread(
        thread_pb2.CreateThreadRequest(
            thread=thread_pb2.Thread(assistant_id=assistant_id, user_id="u9")
        ),
        metadata=md,
    ).thread
    listed = memory.ListMemories(
        memory_pb2.ListMemoriesRequest(assistant_id=assistant_id, user_id="u1"), metadata=md
    ).memories
    one = memory.GetMemory(
        memory_pb2.GetMemoryRequest(assistant_id=assistant_id, memory_id=listed[0].memory_id),
        metadata=md,
    ).memory
    memory.UpdateMemory(
        memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(
                assistant_id=assistant_id, memory_id=one.memory_id, content=marks.edited
            ),
            update_mask={"paths": ["content"]},
        ),
        metadata=md,
    )
    memory.ListMemoryHistory(
        memory_pb2.ListMemoryHistoryRequest(assistant_id=assistant_id, memory_id=one.memory_id),
        metadata=md,
    )
    memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=one.memory_id),
        metadata=md,
    )
    memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            assistant_id=assistant_id,
            memories=[memory_pb2.Memory(content=f"Has {marks.batch}.", user_id="u1")],
        ),
        metadata=md,
    )
    threads.AddMessages(
        thread_pb2.AddMessagesRequest(
            thread_id=made.thread_id,
            messages=[thread_pb2.Message(role=thread_pb2.ROLE_USER, content=marks.imported)],
        ),
        metadata=md,
    )
    threads.UpdateThread(
        thread_pb2.UpdateThreadRequest(
            thread=thread_pb2.Thread(thread_id=made.thread_id, metadata={"ticket": "1"}),
            update_mask={"paths": ["metadata"]},
        ),
        metadata=md,
    )
    threads.ForkThread(
        thread_pb2.ForkThreadRequest(thread_id=made.thread_id, through_sequence=0), metadata=md
    )
    # Refused: bad input that holds a secret must not be logged either.
    refused = [
        lambda: memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    assistant_id=assistant_id, content=marks.refused, metadata={"$x": marks.refused}
                )
            ),
            metadata=md,
        ),
        lambda: list(
            threads.SendMessage(
                thread_pb2.SendMessageRequest(
                    content=marks.refused, thread_id=thread_id, user_id="u9"
                ),
                metadata=md,
            )
        ),
        lambda: threads.CancelRun(
            thread_pb2.CancelRunRequest(thread_id=thread_id, run_id="run_" + "0" * 32),
            metadata=md,
        ),
    ]
    for call in refused:
        with pytest.raises(grpc.RpcError):
            call()
    threads.DeleteThread(
        thread_pb2.DeleteThreadRequest(thread_id=made.thread_id, delete_memories=True), metadata=md
    )
    assistants.DeleteAssistant(
        assistant_pb2.DeleteAssistantRequest(assistant_id=assistant_id), metadata=md
    )


def test_no_key_content_or_memory_text_in_debug_logs_or_exported_telemetry(
    ferretdb: FerretDB, llm: ScriptedLLM, tmp_path: Path
) -> None:
    marks = Marks()
    llm.set_default(_route(marks))
    address = f"127.0.0.1:{free_port()}"
    env = clean_env(
        LOOM_LISTEN=address,
        LOOM_MONGODB_URI=ferretdb.uri,
        LOOM_MONGODB_DB=f"loomsecrets_{secrets.token_hex(4)}",
        LOOM_LLM_BASE_URL=llm.base_url,
        LOOM_LLM_MODEL="scripted-model",
        LOOM_DEV_API_KEY=marks.key,
        LOOM_DATA_DIR=str(tmp_path / "data"),
        LOOM_EMBEDDING_MODEL_DIR=str(MODEL_DIR),
        LOOM_JOB_POLL_SECONDS="0.1",
        LOOM_LOG_LEVEL="DEBUG",
        OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=None,  # the default: off
        # Every span, with its attributes and events, and every metric point,
        # written to stdout as JSON when the process ends.
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="console",
    )
    proc = LoomProcess(env, tmp_path, "loom-secrets")
    try:
        proc.wait_ready(timeout=60)
        _scenario(address, marks)
        assert proc.terminate(timeout=30) == 0
    finally:
        proc.kill()
    output = proc.output()
    # The output holds what the check is about: DEBUG lines, the RPCs' log
    # lines, and the spans of the model, memory and tool calls with attributes.
    for expected in (
        '"level": "DEBUG"',
        '"rpc.code": "UNAUTHENTICATED"',
        '"name": "chat scripted-model"',
        '"name": "memory.recall"',
        '"name": "/loom.v1.ThreadService/SubmitToolOutputs"',
        '"name": "/loom.v1.MemoryService/SearchMemories"',
        '"name": "/loom.v1.MemoryService/UpdateMemory"',
        '"name": "/loom.v1.ThreadService/AddMessages"',
        '"name": "/loom.v1.ThreadService/ForkThread"',
        '"name": "/loom.v1.MemoryService/BatchCreateMemories"',
        '"name": "/loom.v1.AssistantService/DeleteAssistant"',
        '"rpc.code": "INVALID_ARGUMENT"',
        '"gen_ai.usage.output_tokens"',
    ):
        assert expected in output, f"{expected} not in Loom's output"
    leaked = {name: value for name, value in marks.all().items() if value in output}
    assert not leaked, f"in Loom's logs or telemetry: {sorted(leaked)}"
