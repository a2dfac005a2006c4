"""Jobs collection."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
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
        "owner": job.owner,
        "waits": job.waits,
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
        owner=d.get("owner", ""),
        waits=int(d.get("waits", 0)),
    )


class MongoJobStore:
    """``JobStore`` over one collection, keyed by tenant and job id
    (``scoped.py``). Claiming a job is not done here: the runner takes a
    lease named after the job (a unique insert), which is atomic on MongoDB
    and FerretDB alike; ``save`` only fences a runner that lost that lease."""

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

    async def save(self, job: Job, *, claim: bool = False) -> bool:
        doc = _to_doc(job)
        stored = doc.pop("_id")
        query: Doc = {"_id": stored} if claim else {"_id": stored, "owner": job.owner}
        result = await self._c.update_one(query, {"$set": doc})
        return result.matched_count == 1

    async def due(
        self, now: datetime, stale_before: datetime, limit: int, skip_tenants: Sequence[str] = ()
    ) -> list[Job]:
        # One query per state rather than one $or: FerretDB pushes equality
        # filters down to PostgreSQL but not $or, which would read every job
        # ever run; this way MongoDB and FerretDB both read the "due" index.
        waiting: Doc = {"state": JobState.PENDING.value, "next_run_time": {"$lte": now}}
        stale: Doc = {"state": JobState.RUNNING.value, "update_time": {"$lt": stale_before}}
        found: list[Job] = []
        for query in (waiting, stale):
            if skip_tenants:
                query["tenant"] = {"$nin": list(skip_tenants)}
            cursor = self._c.find(query).sort("next_run_time", ASCENDING).limit(limit)
            found.extend([_from_doc(d) async for d in cursor])
        return sorted(found, key=lambda job: job.next_run_time)[:limit]

    async def find(self, state: JobState | None, tenant: str | None, limit: int) -> list[Job]:
        query: Doc = {}
        if state is not None:
            query["state"] = state.value
        if tenant is not None:
            query["tenant"] = tenant
        cursor = self._c.find(query).sort("update_time", DESCENDING).limit(limit)
        return [_from_doc(d) async for d in cursor]

    async def requeue(self, tenant: str, job_id: str, now: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": key(tenant, job_id), "state": JobState.FAILED.value},
            {
                "$set": {
                    "state": JobState.PENDING.value,
                    "attempts": 0,
                    "waits": 0,
                    "next_run_time": now,
                    "update_time": now,
                }
            },
        )
        return result.matched_count == 1

    async def backlog(self) -> tuple[int, datetime | None]:
        times = []
        for state in _OPEN:  # one equality each: FerretDB pushes no $in down
            cursor = self._c.find({"state": state}, {"create_time": 1})
            times.extend([d["create_time"] async for d in cursor])
        return len(times), min(times) if times else None
