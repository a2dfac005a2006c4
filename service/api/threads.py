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
    memory_from_pb,
    message_to_pb,
    thread_to_pb,
    tools_from_pb,
)
from service.api.generation import generation_from_pb
from service.core.conversation import Conversation, SendRequest
from service.core.threads import Threads

__all__ = ["ThreadServicer"]

Context: TypeAlias = aio.ServicerContext[Any, Any]


class ThreadServicer(thread_pb2_grpc.ThreadServiceServicer):
    """Translates ThreadService calls to ``Threads`` and ``Conversation``."""

    def __init__(self, threads: Threads, conversation: Conversation) -> None:
        self._threads = threads
        self._conversation = conversation

    async def CreateThread(
        self, request: thread_pb2.CreateThreadRequest, context: Context
    ) -> thread_pb2.CreateThreadResponse:
        t = request.thread
        created = await self._threads.create(tenant(), t.assistant_id, t.user_id, dict(t.metadata))
        return thread_pb2.CreateThreadResponse(thread=thread_to_pb(created))

    async def GetThread(
        self, request: thread_pb2.GetThreadRequest, context: Context
    ) -> thread_pb2.GetThreadResponse:
        found = await self._threads.get(tenant(), request.thread_id)
        return thread_pb2.GetThreadResponse(thread=thread_to_pb(found))

    async def ListThreads(
        self, request: thread_pb2.ListThreadsRequest, context: Context
    ) -> thread_pb2.ListThreadsResponse:
        page = await self._threads.list(
            tenant(), request.assistant_id, request.user_id, request.page_size, request.page_token
        )
        return thread_pb2.ListThreadsResponse(
            threads=[thread_to_pb(t) for t in page.items], next_page_token=page.next_page_token
        )

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
