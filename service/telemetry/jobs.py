"""Background jobs in traces and metrics.

A job carries the W3C trace context of the span that queued it
(``Job.trace_context``, stored with the job). Queueing is a PRODUCER span
``enqueue {kind}``; each run of the job is a CONSUMER span ``run {kind}``
that is a child of it, so the job's model calls, Chroma writes and MongoDB
commands show in the trace of the message that caused them, and that also
links to it, the form trace viewers use for work that outlives its cause.
The runner's polling is not traced (it would be a trace per poll).

The queue's depth and the age of its oldest open job are observable gauges
(``loom.jobs.queue.depth``, ``loom.jobs.queue.age``) read from a sample the
``BacklogSampler`` refreshes at the metric export interval: the gauges are
read on the exporter's thread, and the job store is asynchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanKind

from service.telemetry.spans import span, tracer

__all__ = ["BacklogSampler", "enqueue_span", "job_span", "untraced"]

log = logging.getLogger(__name__)

_tracer = tracer("loom.jobs")


@contextlib.contextmanager
def enqueue_span(kind: str, job_id: str, tenant: str) -> Iterator[dict[str, str]]:
    """A PRODUCER span around queueing a job; yields the trace context to
    store with it (empty when tracing is off)."""
    with span(
        _tracer,
        f"enqueue {kind}",
        kind=SpanKind.PRODUCER,
        attributes={"loom.job.kind": kind, "loom.job.id": job_id, "loom.tenant": tenant},
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


@contextlib.contextmanager
def job_span(kind: str, job_id: str, tenant: str, trace_context: dict[str, str]) -> Iterator[Span]:
    """The CONSUMER span of one run of a job, current for the run, child of
    and linked to the span that queued it. The run starts from a fresh
    context: nothing of the poller's (untraced) context leaks into it."""
    parent = propagate.extract(trace_context, context=otel_context.Context())
    cause = trace.get_current_span(parent).get_span_context()
    links = [Link(cause, {"loom.link": "enqueued_by"})] if cause.is_valid else []
    token = otel_context.attach(parent)
    try:
        with span(
            _tracer,
            f"run {kind}",
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "loom.job.kind": kind,
                "loom.job.id": job_id,
                "loom.tenant": tenant,
            },
        ) as current:
            yield current
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """No spans below (MongoDB commands of the job poller, say)."""
    with suppress_instrumentation():
        yield


Backlog = Callable[[], Awaitable[tuple[int, datetime | None]]]


class BacklogSampler:
    """Samples ``backlog()`` (open jobs, oldest creation time) every
    ``interval`` seconds for the queue gauges. The gauges report the sampler
    started last (one per process, but for tests that start several)."""

    def __init__(self, backlog: Backlog, interval: float) -> None:
        self._backlog = backlog
        self._interval = interval
        self._depth: int | None = None
        self._oldest: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        """Read the backlog now."""
        with untraced():
            self._depth, self._oldest = await self._backlog()

    def start(self) -> None:
        """Sample every ``interval`` seconds until ``stop()``."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="loom-job-backlog")
            _active.append(self)

    async def stop(self) -> None:
        """Stop sampling."""
        if self in _active:
            _active.remove(self)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next sample may work; the gauges keep the last one
                log.debug("job backlog sample failed", exc_info=True)
            await asyncio.sleep(self._interval)

    def depth(self) -> int | None:
        """Open jobs at the last sample (None before the first)."""
        return self._depth

    def age(self) -> float | None:
        """Seconds since the oldest open job was queued (0 with none)."""
        if self._depth is None:
            return None
        age = (datetime.now(UTC) - self._oldest).total_seconds() if self._oldest else 0.0
        return max(age, 0.0)


_active: list[BacklogSampler] = []


def _observe_depth(_: CallbackOptions) -> Iterable[Observation]:
    depth = _active[-1].depth() if _active else None
    return [] if depth is None else [Observation(depth)]


def _observe_age(_: CallbackOptions) -> Iterable[Observation]:
    age = _active[-1].age() if _active else None
    return [] if age is None else [Observation(age)]


# Instruments are made once per process (the SDK hands back the first one
# for a name, with its callbacks).
_meter = metrics.get_meter("loom")
_meter.create_observable_gauge(
    "loom.jobs.queue.depth",
    callbacks=[_observe_depth],
    unit="{job}",
    description="Background jobs pending or running.",
)
_meter.create_observable_gauge(
    "loom.jobs.queue.age",
    callbacks=[_observe_age],
    unit="s",
    description="Age of the oldest pending or running background job (0: none).",
)
