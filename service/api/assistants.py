"""AssistantService: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeAlias

from grpc import aio

from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc
from service.api.context import tenant
from service.api.convert import (
    assistant_to_pb,
    memory_from_pb,
    strategy_from_pb,
    tools_from_pb,
    update_paths,
)
from service.core.assistants import UPDATABLE_FIELDS, AssistantDraft, Assistants
from service.core.models import MemoryMode

__all__ = ["AssistantServicer"]

Context: TypeAlias = aio.ServicerContext[Any, Any]


def _draft(a: assistant_pb2.Assistant, paths: Collection[str] = ("*",)) -> AssistantDraft:
    """The assistant's fields as the domain takes them; enums are converted
    (and refused if unknown) only where ``paths`` will read them, as AIP-134
    leaves fields outside an update mask unread."""
    read = "*" in paths
    return AssistantDraft(
        name=a.name,
        instructions=a.instructions,
        model=a.model,
        memory_mode=memory_from_pb(a.memory_mode, "assistant.memory_mode")
        if read or "memory_mode" in paths
        else MemoryMode.UNSPECIFIED,
        metadata=dict(a.metadata),
        context_window=a.context_window,
        context_strategy=strategy_from_pb(a.context_strategy, "assistant.context_strategy")
        if read or "context_strategy" in paths
        else None,
        tools=tools_from_pb(a.tools, "assistant.tools"),
        memory_from_tool_outputs=a.memory_from_tool_outputs,
        shared_memory_writes=a.shared_memory_writes,
    )


class AssistantServicer(assistant_pb2_grpc.AssistantServiceServicer):
    """Translates AssistantService calls to ``Assistants``."""

    def __init__(self, assistants: Assistants) -> None:
        self._assistants = assistants

    async def CreateAssistant(
        self, request: assistant_pb2.CreateAssistantRequest, context: Context
    ) -> assistant_pb2.CreateAssistantResponse:
        created = await self._assistants.create(tenant(), _draft(request.assistant))
        return assistant_pb2.CreateAssistantResponse(assistant=assistant_to_pb(created))

    async def GetAssistant(
        self, request: assistant_pb2.GetAssistantRequest, context: Context
    ) -> assistant_pb2.GetAssistantResponse:
        found = await self._assistants.get(tenant(), request.assistant_id)
        return assistant_pb2.GetAssistantResponse(assistant=assistant_to_pb(found))

    async def ListAssistants(
        self, request: assistant_pb2.ListAssistantsRequest, context: Context
    ) -> assistant_pb2.ListAssistantsResponse:
        page = await self._assistants.list(tenant(), request.page_size, request.page_token)
        return assistant_pb2.ListAssistantsResponse(
            assistants=[assistant_to_pb(a) for a in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateAssistant(
        self, request: assistant_pb2.UpdateAssistantRequest, context: Context
    ) -> assistant_pb2.UpdateAssistantResponse:
        paths = update_paths(request.update_mask, request.assistant, UPDATABLE_FIELDS)
        updated = await self._assistants.update(
            tenant(), request.assistant.assistant_id, _draft(request.assistant, paths), paths
        )
        return assistant_pb2.UpdateAssistantResponse(assistant=assistant_to_pb(updated))

    async def DeleteAssistant(
        self, request: assistant_pb2.DeleteAssistantRequest, context: Context
    ) -> assistant_pb2.DeleteAssistantResponse:
        count = await self._assistants.delete(tenant(), request.assistant_id)
        return assistant_pb2.DeleteAssistantResponse(deleted_thread_count=count)
