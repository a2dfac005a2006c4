"""Durable background jobs: recorded in the database before they are
acknowledged, run off the caller's path, retried, resumed after a restart,
and run by one replica at a time.

Claiming. A job is claimed by taking a lease named after it (the same
unique-insert lease that guards threads), renewed while the job runs, so two
replicas never run one job at once however long it takes, and a runner that
dies loses its claim when the lease expires. A runner that loses the lease
(its renewal finds it gone or taken, or cannot confirm it in time) stops the
job and writes nothing more; the job's own writes are also fenced on the
runner's id (``JobStore.save``). Handlers must still be idempotent: they may
run again after a crash, and can keep what an attempt worked out in the
job's checkpoint.

Fairness. A replica runs at most ``concurrency`` jobs, and at most
``tenant_concurrency`` of one tenant, taking due jobs oldest first but in
turn across tenants, so one tenant's burst cannot hold back the others.

Failures. What waiting cures (a dependency unreachable or timing out, the
model rate-limiting: ``Unavailable``, ``ResourceExhausted``,
``DeadlineExceeded``, after the wiring's ``translate`` has turned driver
errors into domain errors) is retried with back-off capped at
``max_retry_delay``, for as long as it takes. What waiting will not cure (a
deleted assistant or thread, a request the model refuses: ``NotFound``,
``InvalidArgument``, ``FailedPrecondition``) fails the job at once. Anything
else is retried with back-off up to ``max_attempts`` runs. FAILED jobs stay
listed and can be re-queued (``python -m service jobs``).

Usage: the model tokens a job spends (summaries, fact extraction) are
metered (``service.core.usage``) and, when its payload names a
``thread_id``, charged to that thread through ``charge`` (tenant, thread,
usage), whether the attempt succeeds or not: they were spent.

Tracing: queueing a job stores the current trace context with it
(``Job.trace_context``), and each run is a span that is a child of, and
linked to, the span that queued it (``service.telemetry.jobs``), so a
message's trace shows the work it caused. Polling is not traced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, TypeVar

from opentelemetry.trace import Span

from service.core import errors
from service.core.clock import now
from service.core.lease_port import LeaseStore
from service.core.leases import JOB, Lease, Leases
from service.core.models import Usage
from service.core.ports import Job, JobState, JobStore, Translate
from service.core.shield import Shield
from service.core.usage import metered
from service.telemetry import record_error
from service.telemetry.jobs import enqueue_span, job_span, untraced

__all__ = ["Checkpoint", "Handler", "JobRunner", "RetryLater", "fair_order"]

log = logging.getLogger(__name__)

Checkpoint = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Job, Checkpoint], Awaitable[dict[str, Any]]]
Charge = Callable[[str, str, Usage], Coroutine[Any, Any, None]]
T = TypeVar("T")

# Waiting cures these; it never cures those.
_WAITABLE = (errors.Unavailable, errors.ResourceExhausted, errors.DeadlineExceeded)
_FINAL = (errors.NotFound, errors.InvalidArgument, errors.FailedPrecondition)
_DUE_BATCH = 64


class RetryLater(Exception):
    """The job cannot run just now (a resource is busy); try again after
    ``delay`` seconds without counting this as a failed attempt."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


def fair_order(jobs: list[Job]) -> list[Job]:
    """``jobs`` (oldest first) taken in turn across tenants: each tenant's
    oldest, then each one's second oldest, and so on."""
    queues: dict[str, list[Job]] = {}
    for job in jobs:
        queues.setdefault(job.tenant, []).append(job)
    ordered: list[Job] = []
    for rank in range(max((len(q) for q in queues.values()), default=0)):
        ordered.extend(q[rank] for q in queues.values() if rank < len(q))
    return ordered


class JobRunner:
    """Polls for due jobs and runs them, a few at a time, fairly across tenants."""

    def __init__(
        self,
        store: JobStore,
        leases: LeaseStore,
        shield: Shield,
        *,
        poll_interval: float = 1.0,
        concurrency: int = 4,
        tenant_concurrency: int = 2,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        lease_seconds: float = 60.0,
        translate: Translate | None = None,
        charge: Charge | None = None,
    ) -> None:
        self._store = store
        self._charge = charge
        self._leases = Leases(leases, lease_seconds, shield)
        self._shield = shield
        self._handlers: dict[str, Handler] = {}
        self._poll = poll_interval
        self._concurrency = concurrency
        self._tenant_concurrency = tenant_concurrency
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._lease_seconds = lease_seconds
        self._translate = translate or (lambda _: None)
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[asyncio.Task[None], str] = {}  # task -> tenant

    def register(self, kind: str, handler: Handler) -> None:
        """Run ``handler`` for jobs of ``kind``."""
        self._handlers[kind] = handler

    async def enqueue(
        self,
        tenant: str,
        kind: str,
        payload: dict[str, Any],
        *,
        job_id: str,
        trace_context: dict[str, str] | None = None,
        not_before: datetime | None = None,
    ) -> Job | None:
        """Record a job; it runs soon after (or once ``not_before`` has
        come). The job is durable once this returns. None if a job with that
        id exists already (the id makes enqueueing idempotent).
        ``trace_context`` defaults to the current span's (W3C
        ``traceparent``)."""
        with enqueue_span(kind, job_id, tenant) as current:
            t = now()
            job = Job(
                job_id=job_id,
                kind=kind,
                tenant=tenant,
                payload=payload,
                state=JobState.PENDING,
                create_time=t,
                update_time=t,
                next_run_time=max(t, not_before) if not_before else t,
                trace_context=dict(current if trace_context is None else trace_context),
            )
            if not await self._store.insert(job):
                return None
        self._wake.set()
        return job

    def start(self) -> None:
        """Start polling (idempotent)."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="loom-jobs")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop polling; give running jobs ``grace`` seconds, then cancel them
        (they are retried after the next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task}, timeout=max(grace, 1.0))
            self._loop_task = None
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)

    async def run_due(self) -> int:
        """Start the due jobs this replica has room for and can claim; return
        how many."""
        running = Counter(self._running.values())
        full = [t for t, n in running.items() if n >= self._tenant_concurrency]
        if len(self._running) >= self._concurrency:
            return 0
        t = now()
        stale = t - timedelta(seconds=self._lease_seconds)
        due = await self._store.due(t, stale, limit=_DUE_BATCH, skip_tenants=full)
        started = 0
        for job in fair_order([j for j in due if j.kind in self._handlers]):
            if len(self._running) >= self._concurrency:
                break
            if running[job.tenant] >= self._tenant_concurrency:
                continue
            lease = await self._leases.claim(job.tenant, f"job:{job.job_id}", JOB)
            if lease is None:
                continue
            task = asyncio.create_task(self._run(job, lease), name=f"job {job.job_id}")
            self._running[task] = job.tenant
            task.add_done_callback(self._finished)
            running[job.tenant] += 1
            started += 1
        return started

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._wake.set()  # room for another job

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                with untraced():
                    await self.run_due()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # Once per outage, not once per poll.
                if not failing:
                    log.warning("job poll failed; retrying", exc_info=True)
                failing = True
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            self._wake.clear()

    async def _run(self, job: Job, lease: Lease) -> None:
        try:
            with job_span(job.kind, job.job_id, job.tenant, job.trace_context) as span:
                await self._run_traced(job, lease, span)
        finally:
            await self._leases.release(lease)

    async def _run_traced(self, job: Job, lease: Lease, span: Span) -> None:
        try:
            fresh = await self._store.get(job.tenant, job.job_id)
            if fresh is None or fresh.state in (JobState.SUCCEEDED, JobState.FAILED):
                return
            job = fresh
            job.owner = lease.owner
            job.state = JobState.RUNNING
            job.attempts += 1
            job.update_time = now()
            span.set_attribute("loom.job.attempt", job.attempts)
            await self._store.save(job, claim=True)

            async def checkpoint(values: dict[str, Any]) -> None:
                job.checkpoint.update(values)
                job.update_time = now()
                await self._save(job, lease)

            try:
                job.result = await self._fenced(self._handle(job, checkpoint), lease)
            except asyncio.CancelledError:
                job.state = JobState.PENDING  # stopped with the server: run again later
                job.attempts -= 1
                job.update_time = now()
                await self._shield.run(self._save(job, lease))
                raise
            except errors.LeaseLost:
                log.warning("job %s lost its lease; left to its new runner", job.job_id)
                return
            except RetryLater as later:
                job.state = JobState.PENDING
                job.attempts -= 1
                job.next_run_time = now() + timedelta(seconds=later.delay)
                log.debug("job %s deferred: %s", job.job_id, later)
            except Exception as exc:  # noqa: BLE001 - any handler failure is recorded on the job
                record_error(span, exc)
                self._failed(job, exc)
            else:
                job.state = JobState.SUCCEEDED
                job.error = ""
                job.waits = 0
            job.update_time = now()
            span.set_attribute("loom.job.state", job.state.value)
            await self._shield.run(self._save(job, lease))
        except asyncio.CancelledError:
            raise
        except errors.LeaseLost:
            log.warning("job %s lost its lease; its last state was not written", job.job_id)
        except Exception:
            log.exception("job %s could not be recorded", job.job_id)

    async def _save(self, job: Job, lease: Lease) -> None:
        """Write the job, unless this runner no longer holds it.

        Raises:
            LeaseLost: the lease lapsed, or another runner claimed the job.
        """
        lease.check()
        if not await self._store.save(job):
            lost = errors.LeaseLost(f"job:{job.job_id}")
            lease.lose(lost)
            raise lost

    @staticmethod
    async def _fenced(work: Awaitable[T], lease: Lease) -> T:
        """Run ``work``, cancelling it as soon as ``lease`` is lost.

        Raises:
            LeaseLost: the lease was lost before the work finished.
        """
        task = asyncio.ensure_future(work)
        lost = asyncio.ensure_future(lease.lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, errors.LeaseLost):
                    await task
        if task.cancelled():
            raise errors.LeaseLost(lease.thread_id)
        return task.result()

    async def _handle(self, job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
        """Run the job's handler, charging the model tokens it spends to the
        thread its payload names."""
        with metered() as meter:
            try:
                return await self._handlers[job.kind](job, checkpoint)
            finally:
                thread_id = job.payload.get("thread_id")
                if meter and self._charge is not None and isinstance(thread_id, str):
                    try:
                        await self._shield.run(self._charge(job.tenant, thread_id, meter.usage))
                    except Exception:  # a lost count must not fail the job
                        log.warning("could not add job %s's usage", job.job_id, exc_info=True)

    def _failed(self, job: Job, exc: Exception) -> None:
        job.error = f"{type(exc).__name__}: {exc}"[:1000]
        translated = exc if isinstance(exc, errors.LoomError) else self._translate(exc)
        if isinstance(translated, _WAITABLE):
            job.attempts -= 1  # not the job's fault: retry for as long as it takes
            job.waits += 1
            delay = min(self._max_retry_delay, self._retry_delay * 2 ** (job.waits - 1))
            job.state = JobState.PENDING
            job.next_run_time = now() + timedelta(seconds=delay)
            log.info("job %s waits for a dependency; retry in %.1fs: %s", job.job_id, delay, exc)
            return
        if isinstance(translated, _FINAL) or job.attempts >= self._max_attempts:
            job.state = JobState.FAILED
            log.warning("job %s (%s) failed for good: %s", job.job_id, job.kind, job.error)
            return
        delay = min(self._max_retry_delay, self._retry_delay * 2 ** (job.attempts - 1))
        job.state = JobState.PENDING
        job.next_run_time = now() + timedelta(seconds=delay)
        log.info("job %s failed (attempt %d); retry in %.1fs", job.job_id, job.attempts, delay)
