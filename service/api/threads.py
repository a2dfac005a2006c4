"""ThreadService: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any, TypeAlias

from grpc import aio

from generated.loom.v1 import thread_pb2, thread_pb2_grpc
from service.api.context import tenant
from service.api.convert import (
    event_to_pb,
    expiration_from_pb,
    memory_from_pb,
    message_to_pb,
    new_message_from_pb,
    on_busy_from_pb,
    thread_draft_from_pb,
    thread_to_pb,
    tools_from_pb,
    update_paths,
)
from service.api.generation import generation_from_pb
from service.core.conversation import BatchRequest, Conversation, SendRequest
from service.core.forks import Forks
from service.core.threads import UPDATABLE_FIELDS, Threads

__all__ = ["ThreadServicer"]

Context: TypeAlias = aio.ServicerContext[Any, Any]


class ThreadServicer(thread_pb2_grpc.ThreadServiceServicer):
    """Translates ThreadService calls to ``Threads``, ``Conversation`` and
    ``Forks``."""

    def __init__(self, threads: Threads, conversation: Conversation, forks: Forks) -> None:
        self._threads = threads
        self._conversation = conversation
        self._forks = forks

    async def CreateThread(
        self, request: thread_pb2.CreateThreadRequest, context: Context
    ) -> thread_pb2.CreateThreadResponse:
        t = request.thread
        created = await self._threads.create(
            tenant(), t.assistant_id, t.user_id, dict(t.metadata), expiration_from_pb(t)
        )
        return thread_pb2.CreateThreadResponse(thread=thread_to_pb(created))

    async def GetThread(
        self, request: thread_pb2.GetThreadRequest, context: Context
    ) -> thread_pb2.GetThreadResponse:
        found = await self._threads.show(tenant(), request.thread_id)
        return thread_pb2.GetThreadResponse(thread=thread_to_pb(found))

    async def ListThreads(
        self, request: thread_pb2.ListThreadsRequest, context: Context
    ) -> thread_pb2.ListThreadsResponse:
        page = await self._threads.list(
            tenant(),
            request.assistant_id,
            request.user_id,
            request.page_size,
            request.page_token,
            request.filter,
        )
        return thread_pb2.ListThreadsResponse(
            threads=[thread_to_pb(t) for t in page.items], next_page_token=page.next_page_token
        )

    async def UpdateThread(
        self, request: thread_pb2.UpdateThreadRequest, context: Context
    ) -> thread_pb2.UpdateThreadResponse:
        t = request.thread
        paths = update_paths(request.update_mask, t, UPDATABLE_FIELDS)
        updated = await self._conversation.update_thread(
            tenant(), t.thread_id, thread_draft_from_pb(t), paths
        )
        return thread_pb2.UpdateThreadResponse(thread=thread_to_pb(updated))

    async def DeleteThread(
        self, request: thread_pb2.DeleteThreadRequest, context: Context
    ) -> thread_pb2.DeleteThreadResponse:
        count = await self._threads.delete(
            tenant(), request.thread_id, forget=request.delete_memories
        )
        return thread_pb2.DeleteThreadResponse(deleted_message_count=count)

    async def ListMessages(
        self, request: thread_pb2.ListMessagesRequest, context: Context
    ) -> thread_pb2.ListMessagesResponse:
        page = await self._threads.list_messages(
            tenant(), request.thread_id, request.page_size, request.page_token, request.order_by
        )
        return thread_pb2.ListMessagesResponse(
            messages=[message_to_pb(m) for m in page.items], next_page_token=page.next_page_token
        )

    async def AddMessages(
        self, request: thread_pb2.AddMessagesRequest, context: Context
    ) -> thread_pb2.AddMessagesResponse:
        batch = BatchRequest(
            messages=[new_message_from_pb(m) for m in request.messages],
            thread_id=request.thread_id,
            assistant_id=request.assistant_id,
            user_id=request.user_id,
            memory=memory_from_pb(request.memory, "memory"),
            request_id=request.request_id,
        )
        added = await self._conversation.add_messages(tenant(), batch)
        return thread_pb2.AddMessagesResponse(
            thread=thread_to_pb(added.thread),
            thread_created=added.thread_created,
            messages=[message_to_pb(m) for m in added.messages],
            memory_operation_id=added.memory_operation_id,
        )

    async def ForkThread(
        self, request: thread_pb2.ForkThreadRequest, context: Context
    ) -> thread_pb2.ForkThreadResponse:
        fork = await self._forks.fork(tenant(), request.thread_id, request.through_sequence)
        return thread_pb2.ForkThreadResponse(thread=thread_to_pb(fork))

    async def SendMessage(
        self, request: thread_pb2.SendMessageRequest, context: Context
    ) -> AsyncGenerator[thread_pb2.SendMessageResponse, None]:
        send = SendRequest(
            content=request.content,
            thread_id=request.thread_id,
            assistant_id=request.assistant_id,
            user_id=request.user_id,
            memory=memory_from_pb(request.memory, "memory"),
            model=request.model,
            request_id=request.request_id,
            metadata=dict(request.metadata),
            tools=tools_from_pb(request.tools, "tools") if request.tools else None,
            tool_choice=request.tool_choice,
            generation=generation_from_pb(request.generation, "generation.")
            if request.HasField("generation")
            else None,
            on_busy=on_busy_from_pb(request.on_busy, "on_busy"),
        )
        async with contextlib.aclosing(self._conversation.send(tenant(), send)) as events:
            async for event in events:
                yield event_to_pb(event, thread_pb2.SendMessageResponse)

    async def SubmitToolOutputs(
        self, request: thread_pb2.SubmitToolOutputsRequest, context: Context
    ) -> AsyncGenerator[thread_pb2.SubmitToolOutputsResponse, None]:
        outputs = [(o.tool_call_id, o.output) for o in request.tool_outputs]
        events = self._conversation.submit(tenant(), request.thread_id, request.run_id, outputs)
        async with contextlib.aclosing(events) as stream:
            async for event in stream:
                yield event_to_pb(event, thread_pb2.SubmitToolOutputsResponse)

    async def CancelRun(
        self, request: thread_pb2.CancelRunRequest, context: Context
    ) -> thread_pb2.CancelRunResponse:
        message = await self._conversation.cancel(tenant(), request.thread_id, request.run_id)
        return thread_pb2.CancelRunResponse(message=message_to_pb(message))
