"""The contract as clients in any language see it: one set of reply event
types for both streams, the JSON grpcurl users read (field names must never
change), and server reflection under v1 and v1alpha."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from grpc import aio
from grpc_reflection.v1alpha import reflection_pb2

from generated.loom.v1 import thread_pb2
from service.server import Loom
from tests.conftest import Api
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.process import grpcurl_bin, json_objects

GOLDEN = Path(__file__).parent / "golden" / "reply_streams.json"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# Values that differ from run to run; the golden file holds their key only.
_VOLATILE = ("score", "input_tokens", "output_tokens")


def test_both_reply_streams_share_one_set_of_event_types() -> None:
    def events(message: Any) -> list[tuple[str, int, str]]:
        oneof = message.DESCRIPTOR.oneofs_by_name["event"]
        return [(f.name, f.number, f.message_type.full_name) for f in oneof.fields]

    send = events(thread_pb2.SendMessageResponse)
    assert send == events(thread_pb2.SubmitToolOutputsResponse)
    # Top-level types: no nested type named like its field (Go's `Started_`).
    assert all(full_name.count(".") == 2 for _, _, full_name in send), send
    assert [name for name, _, _ in send] == [
        "started",
        "delta",
        "completed",
        "memory",
        "tool_calls_required",
    ]


async def _grpcurl(*args: str) -> str:
    """grpcurl without blocking the loop the in-process server runs on."""
    proc = await asyncio.create_subprocess_exec(
        grpcurl_bin(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"grpcurl {args}: {err.decode()}"
    return out.decode()


def _model(body: dict[str, Any]) -> Reply:
    if any(m["role"] == "tool" for m in body["messages"]):
        return Reply(text="It is sunny in Paris.")
    if body.get("tools"):
        calls = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
        return Reply(text="Let me check. ", tool_calls=calls)
    return Reply(text="ok")


def _normalized(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _normalized(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalized(v, key) for v in value]
    if key.endswith(("_id", "_time")) or key in _VOLATILE:
        return f"<{key}>"
    return value


def _stream(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalized events, consecutive deltas joined (chunking is the model's)."""
    out: list[dict[str, Any]] = []
    for event in _normalized(events):
        if "delta" in event and out and "delta" in out[-1]:
            out[-1]["delta"]["text"] += event["delta"]["text"]
        else:
            out.append(event)
    return out


async def test_reply_stream_json_is_what_clients_were_promised(
    loom: Loom, api: Api, llm: ScriptedLLM
) -> None:
    """Every event kind of both streams, through grpcurl, against a golden
    file: renaming a field (or its JSON name) breaks grpcurl users."""
    llm.set_default(_model)
    target = f"127.0.0.1:{loom.port}"

    async def call(method: str, body: dict[str, Any]) -> list[Any]:
        out = await _grpcurl(
            "-plaintext", "-H", f"x-api-key: {api.key}", "-d", json.dumps(body), target, method
        )
        return json_objects(out)

    assistant = await call(
        "loom.v1.AssistantService/CreateAssistant",
        {"assistant": {"name": "W", "memory_mode": "MEMORY_MODE_READONLY", "tools": [WEATHER]}},
    )
    assistant_id = assistant[0]["assistant"]["assistant_id"]
    content = "The user checks the weather in Paris every morning."
    await call(
        "loom.v1.MemoryService/CreateMemory",
        {"memory": {"assistant_id": assistant_id, "content": content}},
    )
    sent = await call(
        "loom.v1.ThreadService/SendMessage",
        {"content": "What's the weather in Paris?", "assistant_id": assistant_id},
    )
    required = sent[-1]["tool_calls_required"]
    outputs = [
        {"tool_call_id": c["tool_call_id"], "output": "sunny"} for c in required["tool_calls"]
    ]
    submitted = await call(
        "loom.v1.ThreadService/SubmitToolOutputs",
        {
            "thread_id": sent[0]["started"]["thread_id"],
            "run_id": required["run_id"],
            "tool_outputs": outputs,
        },
    )
    got = {"SendMessage": _stream(sent), "SubmitToolOutputs": _stream(submitted)}
    assert got == json.loads(GOLDEN.read_text())


async def test_grpcurl_lists_and_describes_through_reflection(loom: Loom) -> None:
    target = f"127.0.0.1:{loom.port}"
    services = (await _grpcurl("-plaintext", target, "list")).split()
    for name in (
        "loom.v1.AssistantService",
        "loom.v1.ThreadService",
        "loom.v1.MemoryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert name in services
    described = await _grpcurl("-plaintext", target, "describe", "loom.v1.ReplyStarted")
    assert "string thread_id = 1;" in described
    described = await _grpcurl(
        "-plaintext", target, "describe", "grpc.reflection.v1.ServerReflection"
    )
    assert "ServerReflectionInfo" in described
    assert ".grpc.reflection.v1.ServerReflectionRequest" in described


async def _reflect(channel: aio.Channel, version: str, request: bytes) -> Any:
    """One raw reflection exchange: ``request`` as encoded bytes, the answer
    decoded with the v1alpha message (the two versions share every field)."""
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    replies = [reply async for reply in call(iter([request]))]
    assert len(replies) == 1
    return replies[0]


def _string_field(number: int, text: str) -> bytes:
    """A protobuf string field, encoded by hand so the request does not
    depend on the server's own message classes."""
    data = text.encode()
    assert len(data) < 128
    return bytes([number << 3 | 2, len(data)]) + data


async def test_raw_reflection_v1_call(channel: aio.Channel) -> None:
    # ServerReflectionRequest: list_services = 7, file_containing_symbol = 4.
    listed = await _reflect(channel, "v1", _string_field(7, "*"))
    names = {s.name for s in listed.list_services_response.service}
    assert {"loom.v1.ThreadService", "grpc.reflection.v1.ServerReflection"} <= names

    found = await _reflect(channel, "v1", _string_field(4, "loom.v1.ThreadService"))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in found.file_descriptor_response.file_descriptor_proto
    ]
    thread = next(f for f in files if f.name == "loom/v1/thread.proto")
    assert thread.options.go_package == "loom/gen/go/loom/v1;loomv1"
    assert [s.name for s in thread.service] == ["ThreadService"]

    alpha = await _reflect(channel, "v1alpha", _string_field(7, "*"))
    assert {s.name for s in alpha.list_services_response.service} == names
