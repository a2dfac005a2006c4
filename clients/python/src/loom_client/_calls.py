"""Every call of the client as a plan (see ``_plan.py``): the request it
builds, whether a failure may be retried, and what it returns. ``Loom`` and
``AsyncLoom`` only hand these plans to their transport.

A new RPC is one ``Rpc`` line below and one method here, then one line in
each client; a new request field is one key in ``params.py`` and where the
request is built.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from google.protobuf import field_mask_pb2

from loom_client import _convert as convert
from loom_client._plan import Emit, Invoke, Plan, Retry, Rpc, Sleep, pages, reply_stream, unary
from loom_client._proto.loom.v1 import assistant_pb2, memory_pb2, thread_pb2, tools_pb2
from loom_client.errors import LoomError
from loom_client.params import AssistantFields, MemoryChanges, NewMemory, SendOptions, ThreadFields
from loom_client.tools import call_function, function_table, output_text
from loom_client.types import (
    Assistant,
    Memory,
    MemoryOperation,
    Message,
    Reply,
    ScoredMemory,
    Thread,
)

__all__ = ["Plans"]

_A, _T, _M = "AssistantService", "ThreadService", "MemoryService"
CREATE_ASSISTANT = Rpc(_A, "CreateAssistant", assistant_pb2.CreateAssistantResponse)
GET_ASSISTANT = Rpc(_A, "GetAssistant", assistant_pb2.GetAssistantResponse)
LIST_ASSISTANTS = Rpc(_A, "ListAssistants", assistant_pb2.ListAssistantsResponse)
UPDATE_ASSISTANT = Rpc(_A, "UpdateAssistant", assistant_pb2.UpdateAssistantResponse)
DELETE_ASSISTANT = Rpc(_A, "DeleteAssistant", assistant_pb2.DeleteAssistantResponse)
CREATE_THREAD = Rpc(_T, "CreateThread", thread_pb2.CreateThreadResponse)
GET_THREAD = Rpc(_T, "GetThread", thread_pb2.GetThreadResponse)
LIST_THREADS = Rpc(_T, "ListThreads", thread_pb2.ListThreadsResponse)
DELETE_THREAD = Rpc(_T, "DeleteThread", thread_pb2.DeleteThreadResponse)
LIST_MESSAGES = Rpc(_T, "ListMessages", thread_pb2.ListMessagesResponse)
SEND_MESSAGE = Rpc(_T, "SendMessage", thread_pb2.SendMessageResponse)
SUBMIT_TOOL_OUTPUTS = Rpc(_T, "SubmitToolOutputs", thread_pb2.SubmitToolOutputsResponse)
CANCEL_RUN = Rpc(_T, "CancelRun", thread_pb2.CancelRunResponse)
CREATE_MEMORY = Rpc(_M, "CreateMemory", memory_pb2.CreateMemoryResponse)
GET_MEMORY = Rpc(_M, "GetMemory", memory_pb2.GetMemoryResponse)
LIST_MEMORIES = Rpc(_M, "ListMemories", memory_pb2.ListMemoriesResponse)
SEARCH_MEMORIES = Rpc(_M, "SearchMemories", memory_pb2.SearchMemoriesResponse)
UPDATE_MEMORY = Rpc(_M, "UpdateMemory", memory_pb2.UpdateMemoryResponse)
DELETE_MEMORY = Rpc(_M, "DeleteMemory", memory_pb2.DeleteMemoryResponse)
GET_OPERATION = Rpc(_M, "GetMemoryOperation", memory_pb2.GetMemoryOperationResponse)

_ORDERS = {"asc": "sequence asc", "desc": "sequence desc"}

Functions = Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]]


class Plans:
    """The plans of every call, under one retry policy.

    Reads, updates and deletes are retried while UNAVAILABLE (a delete whose
    first attempt landed unseen then reports NOT_FOUND); creates are not
    (their requests carry no idempotency key, so a retry could create twice);
    ``send`` is, because it always carries a ``request_id``.
    """

    def __init__(self, retry: Retry) -> None:
        self.retry = retry

    # ------------------------------------------------------------- assistants

    def create_assistant(self, fields: AssistantFields) -> Plan[Assistant]:
        pb, _ = convert.assistant_pb(fields)
        request = assistant_pb2.CreateAssistantRequest(assistant=pb)
        done = yield from unary(CREATE_ASSISTANT, request, self.retry, idempotent=False)
        return convert.assistant(done.assistant)

    def get_assistant(self, assistant_id: str) -> Plan[Assistant]:
        request = assistant_pb2.GetAssistantRequest(assistant_id=assistant_id)
        done = yield from unary(GET_ASSISTANT, request, self.retry, idempotent=True)
        return convert.assistant(done.assistant)

    def list_assistants(self, page_size: int) -> Plan[None]:
        return pages(
            LIST_ASSISTANTS,
            lambda token: assistant_pb2.ListAssistantsRequest(
                page_size=page_size, page_token=token
            ),
            lambda page: map(convert.assistant, page.assistants),
            self.retry,
        )

    def update_assistant(self, assistant_id: str, fields: AssistantFields) -> Plan[Assistant]:
        pb, paths = convert.assistant_pb(fields)
        pb.assistant_id = assistant_id
        request = assistant_pb2.UpdateAssistantRequest(
            assistant=pb, update_mask=field_mask_pb2.FieldMask(paths=paths)
        )
        done = yield from unary(UPDATE_ASSISTANT, request, self.retry, idempotent=True)
        return convert.assistant(done.assistant)

    def delete_assistant(self, assistant_id: str) -> Plan[int]:
        request = assistant_pb2.DeleteAssistantRequest(assistant_id=assistant_id)
        done = yield from unary(DELETE_ASSISTANT, request, self.retry, idempotent=True)
        return done.deleted_thread_count

    # ------------------------------------------------------------- threads

    def create_thread(self, fields: ThreadFields) -> Plan[Thread]:
        pb = thread_pb2.Thread(
            assistant_id=fields.get("assistant_id", ""),
            user_id=fields.get("user_id", ""),
            metadata=dict(fields.get("metadata") or {}),
        )
        request = thread_pb2.CreateThreadRequest(thread=pb)
        done = yield from unary(CREATE_THREAD, request, self.retry, idempotent=False)
        return convert.thread(done.thread)

    def get_thread(self, thread_id: str) -> Plan[Thread]:
        request = thread_pb2.GetThreadRequest(thread_id=thread_id)
        done = yield from unary(GET_THREAD, request, self.retry, idempotent=True)
        return convert.thread(done.thread)

    def list_threads(self, assistant_id: str, user_id: str, page_size: int) -> Plan[None]:
        return pages(
            LIST_THREADS,
            lambda token: thread_pb2.ListThreadsRequest(
                assistant_id=assistant_id, user_id=user_id, page_size=page_size, page_token=token
            ),
            lambda page: map(convert.thread, page.threads),
            self.retry,
        )

    def delete_thread(self, thread_id: str, delete_memories: bool) -> Plan[int]:
        request = thread_pb2.DeleteThreadRequest(
            thread_id=thread_id, delete_memories=delete_memories
        )
        done = yield from unary(DELETE_THREAD, request, self.retry, idempotent=True)
        return done.deleted_message_count

    def list_messages(self, thread_id: str, order: str, page_size: int) -> Plan[None]:
        if order not in _ORDERS:
            raise ValueError(f"order must be 'asc' or 'desc'; got {order!r}")
        return pages(
            LIST_MESSAGES,
            lambda token: thread_pb2.ListMessagesRequest(
                thread_id=thread_id, order_by=_ORDERS[order], page_size=page_size, page_token=token
            ),
            lambda page: map(convert.message, page.messages),
            self.retry,
        )

    # ------------------------------------------------------------- replies

    def send(self, content: str, options: SendOptions) -> Plan[Reply]:
        """SendMessage under one ``request_id`` (the caller's, or a new one)
        for every attempt, so a retry never stores the message twice."""
        request_id = options.get("request_id") or f"loom-client-{uuid.uuid4()}"
        request = convert.send_request(content, options, request_id)
        return (yield from reply_stream(SEND_MESSAGE, request, self.retry, resend=True))

    def submit(self, thread_id: str, run_id: str, outputs: Mapping[str, Any]) -> Plan[Reply]:
        """SubmitToolOutputs: ``outputs`` by tool call id (strings as they are,
        anything else as JSON). It carries no idempotency key, so it is not
        sent twice."""
        request = thread_pb2.SubmitToolOutputsRequest(
            thread_id=thread_id,
            run_id=run_id,
            tool_outputs=[
                tools_pb2.ToolOutput(tool_call_id=call_id, output=output_text(output))
                for call_id, output in outputs.items()
            ],
        )
        return (yield from reply_stream(SUBMIT_TOOL_OUTPUTS, request, self.retry, resend=False))

    def cancel_run(self, thread_id: str, run_id: str) -> Plan[Message]:
        request = thread_pb2.CancelRunRequest(thread_id=thread_id, run_id=run_id)
        done = yield from unary(CANCEL_RUN, request, self.retry, idempotent=True)
        return convert.message(done.message)

    def run_tools(self, content: str, functions: Functions, options: SendOptions) -> Plan[Reply]:
        """Send, then answer every round of tool calls with ``functions``
        until the reply completes. A function that raises cancels the run
        (the thread is free again) and its exception propagates."""
        table = function_table(functions)
        first = reply = yield from self.send(content, options)
        while reply.requires_action:
            outputs: dict[str, Any] = {}
            for call in reply.tool_calls:
                target = call_function(table, call.name, call.arguments)
                if isinstance(target, str):
                    outputs[call.tool_call_id] = target
                    continue
                try:
                    outputs[call.tool_call_id] = yield Invoke(*target)
                except Exception:
                    yield from self._cancel_quietly(reply)
                    raise
            reply = yield from self.submit(reply.thread_id, reply.run_id, outputs)
        return replace(reply, memories=first.memories)

    def _cancel_quietly(self, reply: Reply) -> Plan[None]:
        # If this fails too, the run expires by itself; the caller's exception matters more.
        with contextlib.suppress(LoomError):
            yield from self.cancel_run(reply.thread_id, reply.run_id)

    @staticmethod
    def emit_reply(plan: Plan[Reply]) -> Plan[None]:
        """The events of ``plan``, then its reply as the last one."""
        reply = yield from plan
        yield Emit(reply)

    # ------------------------------------------------------------- memories

    def create_memory(self, assistant_id: str, content: str, fields: NewMemory) -> Plan[Memory]:
        pb = memory_pb2.Memory(
            assistant_id=assistant_id,
            content=content,
            user_id=fields.get("user_id", ""),
            metadata=dict(fields.get("metadata") or {}),
        )
        request = memory_pb2.CreateMemoryRequest(memory=pb)
        done = yield from unary(CREATE_MEMORY, request, self.retry, idempotent=False)
        return convert.memory(done.memory)

    def get_memory(self, assistant_id: str, memory_id: str) -> Plan[Memory]:
        request = memory_pb2.GetMemoryRequest(assistant_id=assistant_id, memory_id=memory_id)
        done = yield from unary(GET_MEMORY, request, self.retry, idempotent=True)
        return convert.memory(done.memory)

    def list_memories(
        self, assistant_id: str, user_id: str, assistant_wide_only: bool, page_size: int
    ) -> Plan[None]:
        return pages(
            LIST_MEMORIES,
            lambda token: memory_pb2.ListMemoriesRequest(
                assistant_id=assistant_id,
                user_id=user_id,
                assistant_wide_only=assistant_wide_only,
                page_size=page_size,
                page_token=token,
            ),
            lambda page: map(convert.memory, page.memories),
            self.retry,
        )

    def search_memories(
        self, assistant_id: str, query: str, user_id: str, limit: int, min_score: float
    ) -> Plan[list[ScoredMemory]]:
        request = memory_pb2.SearchMemoriesRequest(
            assistant_id=assistant_id,
            query=query,
            user_id=user_id,
            limit=limit,
            min_score=min_score,
        )
        done = yield from unary(SEARCH_MEMORIES, request, self.retry, idempotent=True)
        return [convert.scored_memory(r) for r in done.results]

    def update_memory(
        self, assistant_id: str, memory_id: str, fields: MemoryChanges
    ) -> Plan[Memory]:
        pb = memory_pb2.Memory(assistant_id=assistant_id, memory_id=memory_id)
        if "content" in fields:
            pb.content = fields["content"]
        if "metadata" in fields:
            pb.metadata.update(fields["metadata"])
        request = memory_pb2.UpdateMemoryRequest(
            memory=pb, update_mask=field_mask_pb2.FieldMask(paths=list(fields))
        )
        done = yield from unary(UPDATE_MEMORY, request, self.retry, idempotent=True)
        return convert.memory(done.memory)

    def delete_memory(self, assistant_id: str, memory_id: str) -> Plan[None]:
        request = memory_pb2.DeleteMemoryRequest(assistant_id=assistant_id, memory_id=memory_id)
        yield from unary(DELETE_MEMORY, request, self.retry, idempotent=True)

    def get_operation(self, operation_id: str) -> Plan[MemoryOperation]:
        request = memory_pb2.GetMemoryOperationRequest(operation_id=operation_id)
        done = yield from unary(GET_OPERATION, request, self.retry, idempotent=True)
        return convert.operation(done.operation)

    def wait_operation(
        self, operation_id: str, timeout: float, interval: float
    ) -> Plan[MemoryOperation]:
        """Poll a memory operation until it has succeeded or failed.

        Raises:
            TimeoutError: still pending or running after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            operation = yield from self.get_operation(operation_id)
            left = deadline - time.monotonic()
            if operation.done:
                return operation
            if left <= 0:
                raise TimeoutError(
                    f"memory operation {operation_id!r} is still {operation.state} "
                    f"after {timeout:g}s"
                )
            yield Sleep(min(interval, left))
