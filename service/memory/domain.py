"""An assistant's long-term memory: recall before a reply, episodic writes
during it, fact extraction after it, and the MemoryService use cases.

Scope: a memory belongs to (tenant, assistant, user); user "" means
assistant-wide. Recall in a user's thread sees that user's memories and the
assistant-wide ones, never another user's; a thread without a user sees only
assistant-wide ones (and writes none unless its assistant allows it: the
reply's hooks decide, ``core/reply/hooks.py``). Every index call names the
tenant and assistant, and the index filters on both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

from opentelemetry import metrics

from service.core import ids
from service.core.assistants import get_assistant
from service.core.clock import now
from service.core.errors import InvalidArgument, NotFound
from service.core.jobs import Checkpoint, JobRunner
from service.core.limits import (
    DEFAULT_SEARCH_LIMIT,
    MAX_MEMORY_CHARS,
    MAX_QUERY_CHARS,
    MAX_SEARCH_LIMIT,
    MAX_USER_ID,
)
from service.core.models import Message, Page, Recalled
from service.core.paging import open_cursor
from service.core.ports import AssistantStore, ChatModel, Job, JobStore, MessageStore
from service.core.validation import (
    check_metadata,
    check_text,
    check_update_mask,
)
from service.memory.exchanges import batch_payload, read_exchange
from service.memory.extraction import Candidate, Operation, extract_facts, reconcile
from service.memory.ports import MemoryHit, MemoryIndex, MemoryRecord
from service.telemetry import span, tracer

__all__ = ["EXTRACTION_JOB", "UPDATABLE_FIELDS", "AssistantMemory", "MemoryDraft"]

log = logging.getLogger(__name__)
_tracer = tracer("loom.memory")
_recall_duration = metrics.get_meter("loom").create_histogram(
    "loom.memory.recall.duration",
    unit="s",
    description="Time to recall an assistant's memories for a reply.",
)

EXTRACTION_JOB = "memory.extract"
EPISODIC = "episodic"
FACT = "fact"
MANUAL = "manual"
UPDATABLE_FIELDS = ("content", "metadata")


def episodic_id(message_id: str) -> str:
    """The memory id of a user message's episodic record (one per message)."""
    return ids.derived_id(ids.MEMORY, "episode", message_id)


class MemoryDraft:
    """Caller-supplied fields of a memory."""

    def __init__(
        self, content: str = "", user_id: str = "", metadata: dict[str, str] | None = None
    ) -> None:
        self.content = content
        self.user_id = user_id
        self.metadata = dict(metadata or {})


class AssistantMemory:
    """Implements ``MemoryPort`` for replies, the extraction job, and the
    MemoryService use cases."""

    def __init__(
        self,
        *,
        index: MemoryIndex,
        jobs: JobRunner,
        job_store: JobStore,
        assistants: AssistantStore,
        messages: MessageStore,
        llm: ChatModel,
        default_model: str,
        extraction_model: str = "",
        recall_limit: int = 8,
        recall_min_score: float = 0.0,
        neighbours: int = 5,
    ) -> None:
        self._index = index
        self._jobs = jobs
        self._job_store = job_store
        self._assistants = assistants
        self._messages = messages
        self._llm = llm
        self._default_model = default_model
        self._extraction_model = extraction_model
        self._recall_limit = recall_limit
        self._min_score = recall_min_score
        self._neighbours = neighbours
        jobs.register(EXTRACTION_JOB, self._extract)

    # -- replies -----------------------------------------------------------

    async def recall(
        self, tenant: str, assistant_id: str, user_id: str, thread_id: str, query: str
    ) -> list[Recalled]:
        started = time.perf_counter()
        outcome = "error"
        with span(_tracer, "memory.recall") as current:
            try:
                hits = await self._index.search(
                    tenant,
                    assistant_id,
                    query,
                    user_id=user_id,
                    limit=self._recall_limit * 2,
                    min_score=self._min_score,
                )
                recalled = []
                for hit in hits:
                    record = hit.record
                    # The thread's own messages are already in its prompt.
                    if record.kind == EPISODIC and record.source_thread_id == thread_id:
                        continue
                    recalled.append(Recalled(record.memory_id, record.text, hit.score))
                recalled = recalled[: self._recall_limit]
                current.set_attribute("loom.memory.hits", len(hits))
                current.set_attribute("loom.memory.recalled", len(recalled))
                outcome = "ok"
                return recalled
            finally:
                _recall_duration.record(time.perf_counter() - started, {"loom.outcome": outcome})

    async def remember(
        self, tenant: str, assistant_id: str, user_id: str, thread_id: str, message: Message
    ) -> None:
        await self.remember_all(tenant, assistant_id, user_id, thread_id, [message])

    async def remember_all(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        messages: Sequence[Message],
    ) -> None:
        records = []
        for message in messages:
            t = message.create_time or now()
            records.append(
                MemoryRecord(
                    memory_id=episodic_id(message.message_id),
                    tenant=tenant,
                    assistant_id=assistant_id,
                    user_id=user_id,
                    text=message.content[:MAX_MEMORY_CHARS],
                    kind=EPISODIC,
                    source_thread_id=thread_id,
                    source_message_id=message.message_id,
                    create_time=t,
                    update_time=t,
                )
            )
        with span(_tracer, "memory.remember"):
            await self._index.upsert(records)

    async def schedule_extraction(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        user_message_id: str,
        reply_message_id: str,
        model: str,
        tool_outputs: Sequence[str] = (),
    ) -> str:
        job_id = ids.derived_id(ids.OPERATION, reply_message_id)
        await self._jobs.enqueue(
            tenant,
            EXTRACTION_JOB,
            {
                "assistant_id": assistant_id,
                "user_id": user_id,
                "thread_id": thread_id,
                "user_message_id": user_message_id,
                "reply_message_id": reply_message_id,
                "model": self._extraction_model or model or self._default_model,
                "tool_outputs": [o[:MAX_MEMORY_CHARS] for o in tool_outputs],
            },
            job_id=job_id,
        )
        return job_id

    async def schedule_batch_extraction(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        thread_id: str,
        messages: Sequence[Message],
        model: str,
    ) -> str:
        job_id = ids.derived_id(ids.OPERATION, thread_id, "batch", messages[0].message_id)
        payload = batch_payload(assistant_id, user_id, thread_id, messages)
        payload["model"] = self._extraction_model or model or self._default_model
        await self._jobs.enqueue(tenant, EXTRACTION_JOB, payload, job_id=job_id)
        return job_id

    async def forget_thread(self, tenant: str, assistant_id: str, thread_id: str) -> int:
        return await self._index.delete_where(tenant, assistant_id, source_thread_id=thread_id)

    async def forget_assistant(self, tenant: str, assistant_id: str) -> None:
        await self._index.drop_assistant(tenant, assistant_id)

    # -- the extraction job -----------------------------------------------

    async def _extract(self, job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
        p = job.payload
        tenant, assistant_id, user_id = job.tenant, p["assistant_id"], p["user_id"]
        if "facts" not in job.checkpoint:
            with span(_tracer, "memory.extract") as current:
                exchange = await read_exchange(self._messages, tenant, p)
                if exchange is None:  # the thread was deleted meanwhile
                    current.set_attribute("loom.memory.skipped", "messages deleted")
                    return {"added": [], "updated": [], "deleted": []}
                users, user_text, reply_text = exchange
                # Idempotent: makes sure the episodic write landed even if the
                # inline one during the reply failed.
                await self.remember_all(tenant, assistant_id, user_id, p["thread_id"], users)
                extracted = await extract_facts(
                    self._llm, p["model"], user_text, reply_text, p.get("tool_outputs") or []
                )
                current.set_attribute("loom.memory.facts", len(extracted))
            await checkpoint({"facts": extracted})
        facts: list[str] = list(job.checkpoint["facts"])
        if "operations" not in job.checkpoint:
            with span(_tracer, "memory.reconcile") as current:
                candidates = []
                for fact in facts:
                    hits = await self._index.nearest(
                        tenant, assistant_id, user_id, fact, self._neighbours
                    )
                    candidates.append(
                        Candidate(
                            fact,
                            [
                                (h.record.memory_id, h.record.text, h.dense or 0.0)
                                for h in hits
                                if h.record.kind != EPISODIC
                            ],
                        )
                    )
                ops = await reconcile(self._llm, p["model"], candidates)
                for action in ("add", "update", "delete", "none"):
                    current.set_attribute(
                        f"loom.memory.{action}", sum(o.action == action for o in ops)
                    )
            await checkpoint({"operations": [asdict(o) for o in ops]})
        ops = [Operation(**o) for o in job.checkpoint["operations"]]
        with span(_tracer, "memory.apply"):
            return await self._apply(job, facts, ops)

    async def _apply(self, job: Job, facts: list[str], ops: list[Operation]) -> dict[str, Any]:
        p = job.payload
        tenant, assistant_id, user_id = job.tenant, p["assistant_id"], p["user_id"]
        added: list[str] = []
        updated: list[str] = []
        deleted: list[str] = []
        t = now()
        for op in ops:
            if op.action == "add":
                memory_id = ids.derived_id(ids.MEMORY, job.job_id, str(op.fact))
                await self._index.upsert(
                    [
                        MemoryRecord(
                            memory_id=memory_id,
                            tenant=tenant,
                            assistant_id=assistant_id,
                            user_id=user_id,
                            text=facts[op.fact],
                            kind=FACT,
                            source_thread_id=p["thread_id"],
                            source_message_id=p["reply_message_id"],
                            create_time=t,
                            update_time=t,
                        )
                    ]
                )
                added.append(memory_id)
            elif op.action in ("update", "delete"):
                existing = await self._index.get(tenant, assistant_id, op.memory_id)
                if existing is None or existing.user_id != user_id:
                    continue  # gone already, or (never) outside this scope
                if op.action == "update":
                    await self._index.upsert([replace(existing, text=op.text, update_time=t)])
                    updated.append(op.memory_id)
                else:
                    await self._index.delete(tenant, assistant_id, [op.memory_id])
                    deleted.append(op.memory_id)
        return {"added": added, "updated": updated, "deleted": deleted}

    # -- MemoryService ------------------------------------------------------

    async def _assistant(self, tenant: str, assistant_id: str) -> None:
        await get_assistant(self._assistants, tenant, assistant_id)

    def _check_user(self, user_id: str) -> str:
        return check_text(user_id, "user_id", MAX_USER_ID)

    async def create(self, tenant: str, assistant_id: str, draft: MemoryDraft) -> MemoryRecord:
        """Add a memory explicitly.

        Raises:
            InvalidArgument: blank or long content, bad metadata, malformed id.
            NotFound: no such assistant.
        """
        content = check_text(draft.content, "memory.content", MAX_MEMORY_CHARS, required=True)
        metadata = check_metadata(draft.metadata, "memory.metadata")
        self._check_user(draft.user_id)
        await self._assistant(tenant, assistant_id)
        t = now()
        record = MemoryRecord(
            memory_id=ids.new_id(ids.MEMORY),
            tenant=tenant,
            assistant_id=assistant_id,
            user_id=draft.user_id,
            text=content,
            kind=MANUAL,
            create_time=t,
            update_time=t,
            metadata=metadata,
        )
        await self._index.upsert([record])
        return record

    async def get(self, tenant: str, assistant_id: str, memory_id: str) -> MemoryRecord:
        """Return one memory.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such assistant or memory.
        """
        ids.check_id(ids.MEMORY, memory_id, "memory_id")
        await self._assistant(tenant, assistant_id)
        record = await self._index.get(tenant, assistant_id, memory_id)
        if record is None:
            raise NotFound("memory", memory_id)
        return record

    async def list_page(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        assistant_wide_only: bool,
        page_size: int,
        page_token: str,
    ) -> Page[MemoryRecord]:
        """One page of an assistant's memories, oldest first.

        Raises:
            InvalidArgument: conflicting filters, bad page size or token.
            NotFound: no such assistant.
        """
        self._check_user(user_id)
        if user_id and assistant_wide_only:
            raise InvalidArgument(
                "user_id and assistant_wide_only cannot be combined", field="assistant_wide_only"
            )
        filters: dict[str, object] = {
            "list": "memories",
            "a": assistant_id,
            "u": user_id,
            "w": assistant_wide_only,
        }
        cursor = open_cursor(page_size, page_token, filters, "position")
        await self._assistant(tenant, assistant_id)
        # The index pages by offset: the key a page resumes after is the
        # number of items before it.
        offset = cursor.after or 0
        scope: str | None = "" if assistant_wide_only else (user_id or None)
        items = await self._index.list_records(tenant, assistant_id, scope, cursor.fetch, offset)
        return cursor.page(items, lambda _: offset + cursor.limit)

    async def search(
        self,
        tenant: str,
        assistant_id: str,
        query: str,
        user_id: str,
        limit: int,
        min_score: float,
    ) -> list[MemoryHit]:
        """Rank the scope's memories against ``query``.

        Raises:
            InvalidArgument: blank or long query, bad limit, ``min_score``
                not a number from 0 to 1.
            NotFound: no such assistant.
        """
        check_text(query, "query", MAX_QUERY_CHARS, required=True)
        self._check_user(user_id)
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        # NaN fails both comparisons, so it is refused with the infinities.
        if not 0.0 <= min_score <= 1.0:
            raise InvalidArgument(
                f"min_score {min_score} is out of range: scores run from 0 to 1, so use a "
                "number in [0, 1] (0, the default, keeps every match)",
                field="min_score",
            )
        await self._assistant(tenant, assistant_id)
        return await self._index.search(
            tenant,
            assistant_id,
            query,
            user_id=user_id,
            limit=min(limit or DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT),
            min_score=min_score,
        )

    async def update(
        self,
        tenant: str,
        assistant_id: str,
        memory_id: str,
        draft: MemoryDraft,
        paths: Sequence[str],
    ) -> MemoryRecord:
        """Change a memory's content and/or metadata; ``*`` alone replaces
        both (``check_update_mask``).

        Raises:
            InvalidArgument: a bad mask, bad values, a user_id other than
                the memory's (a memory keeps its user).
            NotFound: no such assistant or memory.
        """
        names_user = "user_id" in paths  # immutable (AIP-203): checked below
        rest = [p for p in paths if p != "user_id"]
        wanted = check_update_mask(rest, UPDATABLE_FIELDS) if rest or not names_user else []
        existing = await self.get(tenant, assistant_id, memory_id)
        if names_user and draft.user_id != existing.user_id:
            raise InvalidArgument(
                "memory.user_id cannot be changed: a memory keeps the user it was created for "
                "(create the memory for the other user and delete this one)",
                field="memory.user_id",
            )
        if not wanted:
            raise InvalidArgument(
                "update_mask path 'user_id' cannot be updated (a memory keeps its user); "
                f"name fields from {', '.join(UPDATABLE_FIELDS)}",
                field="update_mask",
            )
        changes: dict[str, Any] = {"update_time": now()}
        if "content" in wanted:
            changes["text"] = check_text(
                draft.content, "memory.content", MAX_MEMORY_CHARS, required=True
            )
        if "metadata" in wanted:
            changes["metadata"] = check_metadata(draft.metadata, "memory.metadata")
        record = replace(existing, **changes)
        await self._index.upsert([record])
        return record

    async def delete(self, tenant: str, assistant_id: str, memory_id: str) -> None:
        """Delete a memory for good.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such assistant or memory.
        """
        await self.get(tenant, assistant_id, memory_id)
        await self._index.delete(tenant, assistant_id, [memory_id])

    async def operation(self, tenant: str, operation_id: str) -> Job:
        """Return a memory operation.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such operation for this tenant.
        """
        ids.check_id(ids.OPERATION, operation_id, "operation_id")
        job = await self._job_store.get(tenant, operation_id)
        if job is None or job.kind != EXTRACTION_JOB:
            raise NotFound("operation", operation_id)
        return job
