"""MemoryService: protobuf in, domain calls, protobuf out."""

from __future__ import annotations

from typing import Any, TypeAlias

from grpc import aio

from generated.loom.v1 import memory_pb2, memory_pb2_grpc
from service.api.context import tenant
from service.api.convert import timestamp, update_paths
from service.core.memory_history import MemoryVersion
from service.core.ports import Job, JobState
from service.memory.memories import UPDATABLE_FIELDS, Memories, MemoryDraft, MemoryQuery
from service.memory.ports import MemoryRecord

__all__ = ["MemoryServicer", "memory_to_pb", "version_to_pb"]

Context: TypeAlias = aio.ServicerContext[Any, Any]

_KINDS = {
    "episodic": memory_pb2.MEMORY_KIND_EPISODIC,
    "fact": memory_pb2.MEMORY_KIND_FACT,
    "manual": memory_pb2.MEMORY_KIND_MANUAL,
}
_CHANGES = {
    "created": memory_pb2.MEMORY_CHANGE_CREATED,
    "updated": memory_pb2.MEMORY_CHANGE_UPDATED,
    "invalidated": memory_pb2.MEMORY_CHANGE_INVALIDATED,
    "restored": memory_pb2.MEMORY_CHANGE_RESTORED,
}
_STATES = {
    JobState.PENDING: memory_pb2.MemoryOperation.STATE_PENDING,
    JobState.RUNNING: memory_pb2.MemoryOperation.STATE_RUNNING,
    JobState.SUCCEEDED: memory_pb2.MemoryOperation.STATE_SUCCEEDED,
    JobState.FAILED: memory_pb2.MemoryOperation.STATE_FAILED,
}


def memory_to_pb(r: MemoryRecord) -> memory_pb2.Memory:
    """A memory as the API shows it."""
    return memory_pb2.Memory(
        memory_id=r.memory_id,
        assistant_id=r.assistant_id,
        user_id=r.user_id,
        content=r.text,
        kind=_KINDS.get(r.kind, memory_pb2.MEMORY_KIND_UNSPECIFIED),
        source_thread_id=r.source_thread_id,
        source_message_id=r.source_message_id,
        metadata=r.metadata,
        create_time=timestamp(r.create_time),
        update_time=timestamp(r.update_time),
        invalidate_time=timestamp(r.invalidate_time),
        superseded_by=r.superseded_by,
        supersedes=r.supersedes,
        version=r.version,
    )


def version_to_pb(v: MemoryVersion) -> memory_pb2.MemoryVersion:
    """One version of a memory as the API shows it."""
    return memory_pb2.MemoryVersion(
        version=v.version,
        content=v.text,
        metadata=v.metadata,
        change=_CHANGES.get(v.change, memory_pb2.MEMORY_CHANGE_UNSPECIFIED),
        operation_id=v.operation_id,
        thread_id=v.thread_id,
        message_id=v.message_id,
        change_time=timestamp(v.change_time),
        superseded_by=v.superseded_by,
    )


def _operation_to_pb(job: Job) -> memory_pb2.MemoryOperation:
    return memory_pb2.MemoryOperation(
        operation_id=job.job_id,
        state=_STATES[job.state],
        thread_id=str(job.payload.get("thread_id", "")),
        message_id=str(job.payload.get("reply_message_id", "")),
        attempts=job.attempts,
        added_memory_ids=list(job.result.get("added", [])),
        updated_memory_ids=list(job.result.get("updated", [])),
        # Operations recorded before invalidation existed deleted memories.
        deleted_memory_ids=list(job.result.get("deleted", [])),
        invalidated_memory_ids=list(job.result.get("invalidated", [])),
        warnings=list(job.result.get("warnings", [])),
        error=job.error,
        create_time=timestamp(job.create_time),
        update_time=timestamp(job.update_time),
    )


class MemoryServicer(memory_pb2_grpc.MemoryServiceServicer):
    """Translates MemoryService calls to ``Memories``."""

    def __init__(self, memory: Memories) -> None:
        self._memory = memory

    async def CreateMemory(
        self, request: memory_pb2.CreateMemoryRequest, context: Context
    ) -> memory_pb2.CreateMemoryResponse:
        m = request.memory
        record = await self._memory.create(
            tenant(), m.assistant_id, MemoryDraft(m.content, m.user_id, dict(m.metadata))
        )
        return memory_pb2.CreateMemoryResponse(memory=memory_to_pb(record))

    async def BatchCreateMemories(
        self, request: memory_pb2.BatchCreateMemoriesRequest, context: Context
    ) -> memory_pb2.BatchCreateMemoriesResponse:
        records = await self._memory.create_many(
            tenant(),
            request.assistant_id,
            [
                MemoryDraft(m.content, m.user_id, dict(m.metadata), assistant_id=m.assistant_id)
                for m in request.memories
            ],
            request_id=request.request_id,
            sequential=request.sequential,
        )
        return memory_pb2.BatchCreateMemoriesResponse(memories=[memory_to_pb(r) for r in records])

    async def GetMemory(
        self, request: memory_pb2.GetMemoryRequest, context: Context
    ) -> memory_pb2.GetMemoryResponse:
        record = await self._memory.get(tenant(), request.assistant_id, request.memory_id)
        return memory_pb2.GetMemoryResponse(memory=memory_to_pb(record))

    async def ListMemories(
        self, request: memory_pb2.ListMemoriesRequest, context: Context
    ) -> memory_pb2.ListMemoriesResponse:
        page = await self._memory.list_page(
            tenant(),
            request.assistant_id,
            MemoryQuery(request.user_id, request.include_invalidated, request.filter),
            request.assistant_wide_only,
            request.page_size,
            request.page_token,
        )
        return memory_pb2.ListMemoriesResponse(
            memories=[memory_to_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def SearchMemories(
        self, request: memory_pb2.SearchMemoriesRequest, context: Context
    ) -> memory_pb2.SearchMemoriesResponse:
        hits = await self._memory.search(
            tenant(),
            request.assistant_id,
            request.query,
            MemoryQuery(request.user_id, request.include_invalidated, request.filter),
            request.limit,
            request.min_score,
        )
        return memory_pb2.SearchMemoriesResponse(
            results=[
                memory_pb2.ScoredMemory(memory=memory_to_pb(h.record), score=h.score) for h in hits
            ]
        )

    async def UpdateMemory(
        self, request: memory_pb2.UpdateMemoryRequest, context: Context
    ) -> memory_pb2.UpdateMemoryResponse:
        m = request.memory
        # Without a mask, every field set is to change (AIP-134): a user_id
        # set is named too, so that it is refused rather than ignored.
        paths = update_paths(request.update_mask, m, (*UPDATABLE_FIELDS, "user_id"))
        record = await self._memory.update(
            tenant(),
            m.assistant_id,
            m.memory_id,
            MemoryDraft(m.content, m.user_id, dict(m.metadata), m.HasField("invalidate_time")),
            paths,
        )
        return memory_pb2.UpdateMemoryResponse(memory=memory_to_pb(record))

    async def DeleteMemory(
        self, request: memory_pb2.DeleteMemoryRequest, context: Context
    ) -> memory_pb2.DeleteMemoryResponse:
        await self._memory.delete(tenant(), request.assistant_id, request.memory_id)
        return memory_pb2.DeleteMemoryResponse()

    async def ListMemoryHistory(
        self, request: memory_pb2.ListMemoryHistoryRequest, context: Context
    ) -> memory_pb2.ListMemoryHistoryResponse:
        page = await self._memory.history(
            tenant(),
            request.assistant_id,
            request.memory_id,
            request.page_size,
            request.page_token,
        )
        return memory_pb2.ListMemoryHistoryResponse(
            versions=[version_to_pb(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def GetMemoryOperation(
        self, request: memory_pb2.GetMemoryOperationRequest, context: Context
    ) -> memory_pb2.GetMemoryOperationResponse:
        job = await self._memory.operation(tenant(), request.operation_id)
        return memory_pb2.GetMemoryOperationResponse(operation=_operation_to_pb(job))
