"""Thread retention (AIP-214): when a thread expires, and the durable job
that deletes it then.

A thread with an ``expire_time`` is hidden by every read from that moment
(the store's rule), so it is NOT_FOUND at once; a job queued for that time
deletes it with its messages, and its memories if the thread says so. The
job is queued before the expiration is written, so a crash between the two
leaves a job that finds nothing to do rather than a thread nobody deletes.
MongoDB's TTL indexes are not used: FerretDB has none.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from service.core import ids
from service.core.errors import InvalidArgument
from service.core.jobs import Checkpoint, JobRunner
from service.core.limits import MAX_THREAD_TTL_DAYS
from service.core.ports import Job

__all__ = ["EXPIRE_JOB", "MAX_TTL", "Retention", "expire_at"]

EXPIRE_JOB = "thread.expire"
MAX_TTL = timedelta(days=MAX_THREAD_TTL_DAYS)

Purge = Callable[[str, str], Awaitable[dict[str, Any]]]


def expire_at(
    expire_time: datetime | None, ttl: timedelta | None, at: datetime, prefix: str = "thread."
) -> datetime | None:
    """When a thread given ``expire_time`` or ``ttl`` (one of them, or
    neither: it never expires) expires, for a call made at ``at``.

    Raises:
        InvalidArgument: a time not in the future, or a ttl that is not
            positive or longer than ``MAX_TTL``.
    """
    if ttl is not None:
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            raise InvalidArgument(
                f"{prefix}ttl must be positive and at most {MAX_TTL.days} days",
                field=prefix + "ttl",
            )
        return at + ttl
    if expire_time is not None and expire_time <= at:
        raise InvalidArgument(
            f"{prefix}expire_time {expire_time:%Y-%m-%dT%H:%M:%SZ} is not in the future; "
            "to delete a thread now, use DeleteThread",
            field=prefix + "expire_time",
        )
    if expire_time is not None and expire_time - at > MAX_TTL:
        raise InvalidArgument(
            f"{prefix}expire_time is more than {MAX_TTL.days} days away",
            field=prefix + "expire_time",
        )
    return expire_time


class Retention:
    """Queues and runs the jobs that delete threads when they expire.
    ``purge(tenant, thread_id)`` deletes the thread if it has expired (its
    expiration may have changed since the job was queued), or what is left
    under its id if the thread was never stored, and says what it did."""

    def __init__(self, jobs: JobRunner, purge: Purge) -> None:
        self._jobs = jobs
        self._purge = purge
        jobs.register(EXPIRE_JOB, self._run)

    async def schedule(self, tenant: str, thread_id: str, when: datetime) -> None:
        """Queue a check of the thread at ``when`` (once per thread and time)."""
        await self._jobs.enqueue(
            tenant,
            EXPIRE_JOB,
            {"thread_id": thread_id},
            job_id=ids.derived_id(ids.JOB, "expire", thread_id, when.isoformat()),
            not_before=when,
        )

    async def _run(self, job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
        return await self._purge(job.tenant, str(job.payload["thread_id"]))
