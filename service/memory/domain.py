"""An assistant's long-term memory as a reply uses it: recall before a
reply, the episodic write during it, the fact-extraction job after it
(``learning.py``), and forgetting a thread's or an assistant's memories
(with their history). The MemoryService use cases are ``memories.py``.

Scope: a memory belongs to (tenant, assistant, user); user "" means
assistant-wide. Recall in a user's thread sees that user's memories and the
assistant-wide ones, never another user's; a thread without a user sees only
assistant-wide ones (and writes none unless its assistant allows it: the
reply's hooks decide, ``core/reply/hooks.py``). Every index call names the
tenant and assistant, and the index filters on both.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import metrics

from service.core import ids
from service.core.jobs import JobRunner
from service.core.limits import MAX_MEMORY_CHARS
from service.core.models import Message, Recalled
from service.core.ports import ChatModel, MessageStore
from service.memory.exchanges import batch_payload
from service.memory.history import History
from service.memory.learning import EXTRACTION_JOB, Learning, episodic_id, episodic_record
from service.memory.ports import EPISODIC, MemoryIndex
from service.telemetry import span, tracer

__all__ = ["AssistantMemory"]

_tracer = tracer("loom.memory")
_recall_duration = metrics.get_meter("loom").create_histogram(
    "loom.memory.recall.duration",
    unit="s",
    description="Time to recall an assistant's memories for a reply.",
)


class AssistantMemory:
    """Implements ``MemoryPort`` for replies, and registers the extraction
    job with the runner."""

    def __init__(
        self,
        *,
        index: MemoryIndex,
        history: History,
        jobs: JobRunner,
        messages: MessageStore,
        llm: ChatModel,
        default_model: str,
        extraction_model: str = "",
        recall_limit: int = 8,
        recall_min_score: float = 0.0,
        neighbours: int = 5,
    ) -> None:
        self._index = index
        self._history = history
        self._jobs = jobs
        self._default_model = default_model
        self._extraction_model = extraction_model
        self._recall_limit = recall_limit
        self._min_score = recall_min_score
        learning = Learning(
            index=index, history=history, messages=messages, llm=llm, neighbours=neighbours
        )
        jobs.register(EXTRACTION_JOB, learning.run)

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
        records = [episodic_record(tenant, assistant_id, user_id, thread_id, m) for m in messages]
        with span(_tracer, "memory.remember"):
            await self._index.upsert(records)

    async def unremember(self, tenant: str, assistant_id: str, messages: Sequence[Message]) -> None:
        written = [episodic_id(m.message_id) for m in messages]
        await self._index.delete(tenant, assistant_id, written)

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
        return await self._history.forget_thread(tenant, assistant_id, thread_id)

    async def forget_assistant(self, tenant: str, assistant_id: str) -> None:
        await self._history.forget_assistant(tenant, assistant_id)
