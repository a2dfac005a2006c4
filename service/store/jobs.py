"""Jobs collection."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.ports import Job, JobState
from service.store.scoped import key, object_id

__all__ = ["MongoJobStore"]

Doc = dict[str, Any]
_OPEN = [JobState.PENDING.value, JobState.RUNNING.value]


def _to_doc(job: Job) -> Doc:
    return {
        "_id": key(job.tenant, job.job_id),
        "kind": job.kind,
        "tenant": job.tenant,
        "payload": job.payload,
        "state": job.state.value,
        "create_time": job.create_time,
        "update_time": job.update_time,
        "next_run_time": job.next_run_time,
        "attempts": job.attempts,
        "checkpoint": job.checkpoint,
        "result": job.result,
        "error": job.error,
        "trace_context": job.trace_context,
    }


def _from_doc(d: Doc) -> Job:
    return Job(
        job_id=object_id(d["_id"]),
        kind=d["kind"],
        tenant=d["tenant"],
        payload=dict(d.get("payload") or {}),
        state=JobState(d["state"]),
        create_time=d["create_time"],
        update_time=d["update_time"],
        next_run_time=d["next_run_time"],
        attempts=int(d.get("attempts", 0)),
        checkpoint=dict(d.get("checkpoint") or {}),
        result=dict(d.get("result") or {}),
        error=d.get("error", ""),
        trace_context=dict(d.get("trace_context") or {}),
    )


class MongoJobStore:
    """``JobStore`` over one collection, keyed by tenant and job id
    (``scoped.py``). Claiming a job is not done here: the runner takes a
    lease named after the job (a unique insert), which is atomic on MongoDB
    and FerretDB alike."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def insert(self, job: Job) -> bool:
        try:
            await self._c.insert_one(_to_doc(job))
        except DuplicateKeyError:
            return False
        return True

    async def get(self, tenant: str, job_id: str) -> Job | None:
        doc = await self._c.find_one({"_id": key(tenant, job_id)})
        return _from_doc(doc) if doc else None

    async def save(self, job: Job) -> None:
        doc = _to_doc(job)
        stored = doc.pop("_id")
        await self._c.update_one({"_id": stored}, {"$set": doc})

    async def due(self, now: datetime, stale_before: datetime, limit: int) -> list[Job]:
        cursor = (
            self._c.find(
                {
                    "$or": [
                        {"state": JobState.PENDING.value, "next_run_time": {"$lte": now}},
                        {"state": JobState.RUNNING.value, "update_time": {"$lt": stale_before}},
                    ]
                }
            )
            .sort("next_run_time", ASCENDING)
            .limit(limit)
        )
        return [_from_doc(d) async for d in cursor]

    async def backlog(self) -> tuple[int, datetime | None]:
        cursor = self._c.find({"state": {"$in": _OPEN}}, {"create_time": 1})
        times = [d["create_time"] async for d in cursor]
        return len(times), min(times) if times else None
