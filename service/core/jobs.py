"""Durable background jobs: recorded in the database before they are
acknowledged, run off the caller's path, retried with back-off, resumed
after a restart, and run by one replica at a time.

A job is claimed by taking a lease named after it (the same unique-insert
lease that guards threads), so two replicas never run one job at once, and a
runner that dies loses its claim when the lease expires. Handlers must be
idempotent: they may run again after a crash, and can keep what an attempt
worked out in the job's checkpoint.

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
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from opentelemetry.trace import Span

from service.core.clock import now
from service.core.models import Usage
from service.core.ports import Job, JobState, JobStore, LeaseOutcome, LeaseStore
from service.core.shield import Shield
from service.core.usage import metered
from service.telemetry import record_error
from service.telemetry.jobs import enqueue_span, job_span, untraced

__all__ = ["Checkpoint", "Handler", "JobRunner", "RetryLater"]

log = logging.getLogger(__name__)

Checkpoint = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Job, Checkpoint], Awaitable[dict[str, Any]]]
Charge = Callable[[str, str, Usage], Coroutine[Any, Any, None]]


class RetryLater(Exception):
    """The job cannot run just now (a resource is busy); try again after
    ``delay`` seconds without counting this as a failed attempt."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay


class JobRunner:
    """Polls for due jobs and runs them, a few at a time."""

    def __init__(
        self,
        store: JobStore,
        leases: LeaseStore,
        shield: Shield,
        *,
        poll_interval: float = 1.0,
        concurrency: int = 4,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        lease_seconds: float = 60.0,
        charge: Charge | None = None,
    ) -> None:
        self._store = store
        self._charge = charge
        self._leases = leases
        self._shield = shield
        self._handlers: dict[str, Handler] = {}
        self._poll = poll_interval
        self._slots = asyncio.Semaphore(concurrency)
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._lease_seconds = lease_seconds
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

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
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)

    async def run_due(self) -> int:
        """Start every due job this replica can claim; return how many."""
        t = now()
        stale = t - timedelta(seconds=self._lease_seconds)
        started = 0
        for job in await self._store.due(t, stale, limit=32):
            if job.kind not in self._handlers:
                continue
            owner = secrets.token_hex(8)
            outcome, _ = await self._leases.acquire(
                job.tenant,
                f"job:{job.job_id}",
                owner,
                t + timedelta(seconds=self._lease_seconds),
                t,
            )
            if outcome is LeaseOutcome.BUSY:
                continue
            await self._slots.acquire()
            task = asyncio.create_task(self._run(job, owner), name=f"job {job.job_id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            started += 1
        return started

    async def _loop(self) -> None:
        while True:
            try:
                with untraced():
                    await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("job poll failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            self._wake.clear()

    async def _run(self, job: Job, owner: str) -> None:
        with job_span(job.kind, job.job_id, job.tenant, job.trace_context) as span:
            await self._run_traced(job, owner, span)

    async def _run_traced(self, job: Job, owner: str, span: Span) -> None:
        lease_id = f"job:{job.job_id}"
        try:
            fresh = await self._store.get(job.tenant, job.job_id)
            if fresh is None or fresh.state in (JobState.SUCCEEDED, JobState.FAILED):
                return
            job = fresh
            job.state = JobState.RUNNING
            job.attempts += 1
            job.update_time = now()
            span.set_attribute("loom.job.attempt", job.attempts)
            await self._store.save(job)

            async def checkpoint(values: dict[str, Any]) -> None:
                job.checkpoint.update(values)
                job.update_time = now()
                await self._store.save(job)

            try:
                job.result = await self._handle(job, checkpoint)
            except asyncio.CancelledError:
                job.state = JobState.PENDING  # stopped with the server: run again later
                job.attempts -= 1
                job.update_time = now()
                await self._shield.run(self._store.save(job))
                raise
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
            job.update_time = now()
            span.set_attribute("loom.job.state", job.state.value)
            await self._shield.run(self._store.save(job))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s could not be recorded", job.job_id)
        finally:
            self._slots.release()
            await self._shield.run(self._leases.release(lease_id, owner))

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
        if job.attempts >= self._max_attempts:
            job.state = JobState.FAILED
            log.warning("job %s (%s) failed for good: %s", job.job_id, job.kind, job.error)
            return
        delay = self._retry_delay * 2 ** (job.attempts - 1)
        job.state = JobState.PENDING
        job.next_run_time = now() + timedelta(seconds=delay)
        log.info("job %s failed (attempt %d); retry in %.1fs", job.job_id, job.attempts, delay)
