"""What the fuzz and isolation tests call and check: a tenant's objects
made through the API, calls of any RPC with raw bytes and their outcome
(status, ErrorInfo, responses), the reasons the README documents, and the
counts that say whether a refused write left anything behind."""

from __future__ import annotations

import contextlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2, status_pb2

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
from service.api.reasons import END, START
from tests.scripted_llm import Reply
from tests.support.process import REPO

__all__ = [
    "DOCUMENTED",
    "TOOL_TRIGGER",
    "Outcome",
    "Stubs",
    "TenantWorld",
    "invoke",
    "model_route",
]

# A user message with this word (and tools) makes the model call a tool.
TOOL_TRIGGER = "CALL-THE-TOOL"

LOOKUP = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Find an order.",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}},
    },
}


def _documented() -> dict[str, set[str]]:
    """Reason -> status code names, from the README's table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index(START) : text.index(END)]
    found: dict[str, set[str]] = {}
    for codes, reason in re.findall(r"^\| (.+?) \| `([A-Z_]+)` \|", table, re.MULTILINE):
        found[reason] = set(re.findall(r"`([A-Z_]+)`", codes))
    return found


DOCUMENTED = _documented()


def model_route(body: dict[str, Any]) -> Reply:
    """The scripted model: background memory work finds nothing (so that
    counts move only with the calls under test), a message with the
    trigger word calls the tool it was given, anything else is echoed."""
    messages = body["messages"]
    system = str(messages[0].get("content")) if messages and messages[0]["role"] == "system" else ""
    if "From the exchange below" in system:
        return Reply(text='{"facts": []}')
    if "For each new fact" in system:
        return Reply(text='{"operations": []}')
    last = messages[-1] if messages else {}
    if (
        body.get("tools")
        and last.get("role") == "user"
        and TOOL_TRIGGER in str(last.get("content"))
    ):
        name = body["tools"][0]["function"]["name"]
        call = {"id": f"call_{secrets.token_hex(4)}", "name": name, "arguments": {"order": "1"}}
        return Reply(text="", tool_calls=[call])
    return Reply()


@dataclass
class Outcome:
    """What one call answered."""

    code: grpc.StatusCode
    details: str
    reason: str | None  # the ErrorInfo's, None when the status carries none
    domain: str | None
    responses: list[bytes] = field(default_factory=list)


def _error_info(trailers: Any) -> error_details_pb2.ErrorInfo | None:
    for key, value in trailers or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info
    return None


def invoke(
    channel: grpc.Channel, method: MethodDescriptor, raw: bytes, key: str, timeout: float = 60.0
) -> Outcome:
    """Call ``method`` with ``raw`` as the serialized request (identity
    serializers, so bytes that are no message reach the server as sent)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("x-api-key", key),)
    responses: list[bytes] = []
    try:
        if method.server_streaming:
            for response in channel.unary_stream(path)(raw, metadata=metadata, timeout=timeout):
                responses.append(response)
        else:
            responses.append(channel.unary_unary(path)(raw, metadata=metadata, timeout=timeout))
    except grpc.RpcError as error:
        if not isinstance(error, grpc.Call):
            raise
        info = _error_info(error.trailing_metadata())
        return Outcome(
            error.code(),
            error.details() or "",
            info.reason if info else None,
            info.domain if info else None,
            responses,
        )
    return Outcome(grpc.StatusCode.OK, "", None, None, responses)


class Stubs:
    """The three services' stubs, bound to one key."""

    def __init__(self, channel: grpc.Channel, key: str) -> None:
        self.md = (("x-api-key", key),)
        self.assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        self.threads = thread_pb2_grpc.ThreadServiceStub(channel)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)

    def send(self, **fields: Any) -> list[thread_pb2.SendMessageResponse]:
        request = thread_pb2.SendMessageRequest(**fields)
        return list(self.threads.SendMessage(request, metadata=self.md, timeout=60))

    def all_assistants(self) -> list[assistant_pb2.Assistant]:
        found, token = [], ""
        while True:
            page = self.assistants.ListAssistants(
                assistant_pb2.ListAssistantsRequest(page_size=1000, page_token=token),
                metadata=self.md,
            )
            found += page.assistants
            token = page.next_page_token
            if not token:
                return found

    def all_threads(self, assistant_id: str = "", user_id: str = "") -> list[thread_pb2.Thread]:
        found, token = [], ""
        while True:
            page = self.threads.ListThreads(
                thread_pb2.ListThreadsRequest(
                    assistant_id=assistant_id, user_id=user_id, page_size=1000, page_token=token
                ),
                metadata=self.md,
            )
            found += page.threads
            token = page.next_page_token
            if not token:
                return found

    def all_messages(self, thread_id: str) -> list[thread_pb2.Message]:
        found, token = [], ""
        while True:
            page = self.threads.ListMessages(
                thread_pb2.ListMessagesRequest(
                    thread_id=thread_id, page_size=1000, page_token=token
                ),
                metadata=self.md,
            )
            found += page.messages
            token = page.next_page_token
            if not token:
                return found

    def all_memories(self, assistant_id: str, user_id: str = "") -> list[memory_pb2.Memory]:
        found, token = [], ""
        while True:
            page = self.memory.ListMemories(
                memory_pb2.ListMemoriesRequest(
                    assistant_id=assistant_id, user_id=user_id, page_size=1000, page_token=token
                ),
                metadata=self.md,
            )
            found += page.memories
            token = page.next_page_token
            if not token:
                return found


class TenantWorld:
    """One tenant's objects, made through the API: an assistant with memory
    AUTO and a tool, a thread with a reply, a memory, a memory operation, a
    thread whose run waits for tool outputs, and a deleted thread. Every
    text carries ``marker``, so that it can be looked for elsewhere."""

    def __init__(self, channel: grpc.Channel, key: str, user: str = "u1") -> None:
        self.key = key
        self.user = user
        self.api = Stubs(channel, key)
        self.marker = f"mark{secrets.token_hex(6)}"
        self.assistant = self.thread = self.memory = self.operation = ""
        self.run_thread = self.run = self.call = self.deleted = ""
        self.token = ""

    def build(self) -> TenantWorld:
        api, md = self.api, self.api.md
        self.thread = ""
        self.assistant = api.assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name=f"fuzz {self.marker}",
                    instructions=f"Be brief. {self.marker}",
                    memory_mode=common_pb2.MEMORY_MODE_AUTO,
                    metadata={"owner": self.marker},
                    tools=[json_format.ParseDict(LOOKUP, tools_pb2.Tool())],
                )
            ),
            metadata=md,
        ).assistant.assistant_id
        for _ in range(2):
            events = api.send(
                content=f"My code word is {self.marker}.",
                assistant_id=self.assistant,
                user_id=self.user,
                thread_id=self.thread,
            )
            self.thread = events[0].started.thread_id
        self.operation = events[-1].completed.memory_operation_id
        self.memory = api.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(
                    assistant_id=self.assistant,
                    user_id=self.user,
                    content=f"The user's code word is {self.marker}.",
                    metadata={"owner": self.marker},
                )
            ),
            metadata=md,
        ).memory.memory_id
        self.token = api.threads.ListMessages(
            thread_pb2.ListMessagesRequest(thread_id=self.thread, page_size=1), metadata=md
        ).next_page_token
        self.open_run()
        gone = api.send(content=f"gone {self.marker}", assistant_id=self.assistant)
        self.deleted = gone[0].started.thread_id
        api.threads.DeleteThread(
            thread_pb2.DeleteThreadRequest(thread_id=self.deleted), metadata=md
        )
        return self

    def open_run(self) -> None:
        """A new thread whose reply waits for a tool output."""
        events = self.api.send(
            content=f"{TOOL_TRIGGER} for {self.marker}",
            assistant_id=self.assistant,
            user_id=self.user,
        )
        required = events[-1].tool_calls_required
        assert required.run_id, events[-1]
        self.run_thread = events[0].started.thread_id
        self.run = required.run_id
        self.call = required.tool_calls[0].tool_call_id

    def ids(self) -> list[str]:
        return [
            self.assistant,
            self.thread,
            self.memory,
            self.operation,
            self.run_thread,
            self.run,
            self.deleted,
        ]

    def secrets(self) -> list[str]:
        """What no other tenant may ever be shown: the ids and the marker
        (the deleted thread's id is no secret once it is gone)."""
        return [i for i in self.ids() if i != self.deleted] + [self.marker]

    def heal(self) -> None:
        """Make again what a fuzzed call deleted or finished, so that later
        examples still have real objects to aim at."""
        api, md = self.api, self.api.md
        try:
            api.assistants.GetAssistant(
                assistant_pb2.GetAssistantRequest(assistant_id=self.assistant), metadata=md
            )
            api.threads.GetThread(thread_pb2.GetThreadRequest(thread_id=self.thread), metadata=md)
            api.memory.GetMemory(
                memory_pb2.GetMemoryRequest(assistant_id=self.assistant, memory_id=self.memory),
                metadata=md,
            )
            waiting = api.threads.GetThread(
                thread_pb2.GetThreadRequest(thread_id=self.run_thread), metadata=md
            ).thread.pending_run_id
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.build()
            return
        if waiting != self.run:
            self.open_run()
        for thread_id in (self.thread, self.run_thread):  # undo a fuzzed expiration
            with contextlib.suppress(grpc.RpcError):  # THREAD_BUSY: a run waits
                api.threads.UpdateThread(
                    thread_pb2.UpdateThreadRequest(
                        thread=thread_pb2.Thread(thread_id=thread_id),
                        update_mask={"paths": ["expire_time"]},
                    ),
                    metadata=md,
                )

    def counts(self) -> dict[str, int]:
        """How many of each thing the tenant has, as its lists show it."""
        api = self.api
        # Threads a fuzzed call gave an expiration go (and may take their
        # memories) in the background: only lasting ones are counted.
        lasting = [t for t in api.all_threads() if not t.HasField("expire_time")]
        found = {"assistants": len(api.all_assistants()), "threads": len(lasting)}
        for name, thread_id in (("messages", self.thread), ("run_messages", self.run_thread)):
            try:
                found[name] = len(api.all_messages(thread_id))
            except grpc.RpcError:
                found[name] = -1
        try:
            sources = ("", self.thread, self.run_thread)
            memories = api.all_memories(self.assistant)
            found["memories"] = len([m for m in memories if m.source_thread_id in sources])
        except grpc.RpcError:
            found["memories"] = -1
        return found
