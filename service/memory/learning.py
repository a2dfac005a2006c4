"""The fact-extraction job (``memory.extract``): after a reply the model
proposes durable facts from the exchange (``extraction.py``), each is
settled against the nearest valid memories of its scope, and the changes
are applied with their history kept (``history.py``).

The job checkpoints the model's answers, and its writes are idempotent:
new memories get ids derived from the job, and a memory this job already
changed (its current version names the job) is not changed again.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from service.core import ids
from service.core.clock import now
from service.core.jobs import Checkpoint
from service.core.limits import MAX_MEMORY_CHARS
from service.core.models import Message
from service.core.ports import ChatModel, Job, MessageStore
from service.memory.exchanges import read_exchange
from service.memory.extraction import ACTIONS, Candidate, Operation, extract_facts, reconcile
from service.memory.history import History, next_version
from service.memory.ports import EPISODIC, FACT, MemoryIndex, MemoryRecord
from service.telemetry import span, tracer

# The user messages of an exchange, and its user's and assistant's side as text.
Exchange = tuple[list[Message], str, str]

__all__ = ["EXTRACTION_JOB", "Learning", "episodic_id", "episodic_record"]

_tracer = tracer("loom.memory")

EXTRACTION_JOB = "memory.extract"


def episodic_id(message_id: str) -> str:
    """The memory id of a user message's episodic record (one per message)."""
    return ids.derived_id(ids.MEMORY, "episode", message_id)


def episodic_record(
    tenant: str, assistant_id: str, user_id: str, thread_id: str, message: Message
) -> MemoryRecord:
    """A user's message as an episodic memory, as said."""
    t = message.create_time or now()
    return MemoryRecord(
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
        change_thread_id=thread_id,
        change_message_id=message.message_id,
    )


class Learning:
    """Runs the extraction job: extract, reconcile, apply."""

    def __init__(
        self,
        *,
        index: MemoryIndex,
        history: History,
        messages: MessageStore,
        llm: ChatModel,
        neighbours: int = 5,
    ) -> None:
        self._index = index
        self._history = history
        self._messages = messages
        self._llm = llm
        self._neighbours = neighbours

    async def _reindex(
        self,
        tenant: str,
        assistant_id: str,
        user_id: str,
        payload: dict[str, Any],
        exchange: Exchange,
    ) -> Exchange | None:
        """Index the exchange's user messages again (idempotent: makes sure
        the episodic write landed even if the inline one during the reply
        failed); None, with the write undone, if the thread went meanwhile:
        its deletion may have forgotten its memories before this write, and
        deletes the messages first (``Threads._finish_delete``), so reading
        them again after the write tells."""
        records = [
            episodic_record(tenant, assistant_id, user_id, payload["thread_id"], u)
            for u in exchange[0]
        ]
        await self._index.upsert(records)
        if await read_exchange(self._messages, tenant, payload) is not None:
            return exchange
        await self._index.delete(tenant, assistant_id, [r.memory_id for r in records])
        return None

    async def run(self, job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
        """The job's body (``JobRunner`` handler); its result lists the
        memories added, updated and invalidated, and the warnings of what
        was skipped (a model answer malformed twice)."""
        p = job.payload
        tenant, assistant_id, user_id = job.tenant, p["assistant_id"], p["user_id"]
        if "facts" not in job.checkpoint:
            with span(_tracer, "memory.extract") as current:
                exchange = await read_exchange(self._messages, tenant, p)
                if exchange is not None:
                    exchange = await self._reindex(tenant, assistant_id, user_id, p, exchange)
                if exchange is None:  # the thread was deleted meanwhile
                    current.set_attribute("loom.memory.skipped", "messages deleted")
                    return {"added": [], "updated": [], "invalidated": [], "warnings": []}
                _, user_text, reply_text = exchange
                extracted, warnings = await extract_facts(
                    self._llm, p["model"], user_text, reply_text, p.get("tool_outputs") or []
                )
                current.set_attribute("loom.memory.facts", len(extracted))
            await checkpoint({"facts": extracted, "warnings": warnings})
        facts: list[str] = list(job.checkpoint["facts"])
        if "operations" not in job.checkpoint:
            with span(_tracer, "memory.reconcile") as current:
                candidates = [
                    await self._candidate(tenant, assistant_id, user_id, fact) for fact in facts
                ]
                ops, warnings = await reconcile(self._llm, p["model"], candidates)
                for action in ACTIONS:
                    current.set_attribute(
                        f"loom.memory.{action}", sum(o.action == action for o in ops)
                    )
            await checkpoint(
                {
                    "operations": [asdict(o) for o in ops],
                    "warnings": [*job.checkpoint.get("warnings", []), *warnings],
                }
            )
        ops = [Operation(**o) for o in job.checkpoint["operations"]]
        with span(_tracer, "memory.apply"):
            result = await self._apply(job, facts, ops)
        return result | {"warnings": list(job.checkpoint.get("warnings", []))}

    async def _candidate(
        self, tenant: str, assistant_id: str, user_id: str, fact: str
    ) -> Candidate:
        hits = await self._index.nearest(tenant, assistant_id, user_id, fact, self._neighbours)
        return Candidate(
            fact,
            [
                (h.record.memory_id, h.record.text, h.dense or 0.0)
                for h in hits
                if h.record.kind != EPISODIC
            ],
        )

    def _fact(self, job: Job, index: int, text: str, supersedes: str = "") -> MemoryRecord:
        p = job.payload
        t = now()
        return MemoryRecord(
            memory_id=ids.derived_id(ids.MEMORY, job.job_id, str(index)),
            tenant=job.tenant,
            assistant_id=p["assistant_id"],
            user_id=p["user_id"],
            text=text,
            kind=FACT,
            source_thread_id=p["thread_id"],
            source_message_id=p["reply_message_id"],
            create_time=t,
            update_time=t,
            operation_id=job.job_id,
            change_thread_id=p["thread_id"],
            change_message_id=p["reply_message_id"],
            supersedes=supersedes,
        )

    async def _apply(self, job: Job, facts: list[str], ops: list[Operation]) -> dict[str, Any]:
        p = job.payload
        tenant, assistant_id = job.tenant, p["assistant_id"]
        added: list[str] = []
        updated: list[str] = []
        invalidated: list[str] = []
        for op in ops:
            if op.action == "add":
                record = self._fact(job, op.fact, facts[op.fact])
                await self._index.upsert([record])
                added.append(record.memory_id)
                continue
            if op.action == "none":
                continue
            existing = await self._index.get(tenant, assistant_id, op.memory_id)
            if existing is None or existing.user_id != p["user_id"]:
                continue  # gone already, or (never) outside this scope
            done = existing.operation_id == job.job_id  # a retry: this job changed it already
            if existing.invalidate_time is not None and not done:
                continue  # retired meanwhile: nothing left to change
            by = {
                "operation_id": job.job_id,
                "thread_id": p["thread_id"],
                "message_id": p["reply_message_id"],
            }
            t = now()
            if op.action == "update":
                if not done:
                    new = next_version(existing, "updated", t, text=op.text, **by)
                    await self._history.change([(existing, new)])
                updated.append(op.memory_id)
                continue
            replacement = ""
            if op.action == "replace":
                record = self._fact(job, op.fact, facts[op.fact], supersedes=op.memory_id)
                await self._index.upsert([record])
                added.append(record.memory_id)
                replacement = record.memory_id
            if not done:
                retired = next_version(
                    existing, "invalidated", t, invalidate_time=t, superseded_by=replacement, **by
                )
                await self._history.change([(existing, retired)])
            invalidated.append(op.memory_id)
        return {"added": added, "updated": updated, "invalidated": invalidated}
