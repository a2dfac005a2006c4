"""Background jobs against a real FerretDB: leases renewed while a job runs,
a runner that loses its lease stops writing, waiting out dependencies that
come back, failing only what waiting will not cure, fairness across
tenants, and the ``jobs`` CLI."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from service.core.errors import NotFound, Unavailable
from service.core.jobs import JobRunner, fair_order
from service.core.ports import Job, JobState
from service.core.shield import Shield
from service.store import MongoStore, connect
from service.store import errors as store_errors
from service.store.scoped import key
from tests.support.ferretdb import FerretDB
from tests.support.process import clean_env, run_cli

Checkpoint = Callable[[dict[str, Any]], Any]


@pytest.fixture
async def store(ferretdb: FerretDB) -> AsyncIterator[MongoStore]:
    store = connect(ferretdb.uri, f"loom_jobs_{uuid.uuid4().hex[:10]}")
    await store.ensure_indexes()
    yield store
    await store.client.drop_database(store.db.name)
    await store.close()


def _runner(store: MongoStore, **options: Any) -> JobRunner:
    values: dict[str, Any] = {
        "poll_interval": 0.05,
        "retry_delay": 0.05,
        "max_retry_delay": 0.2,
        "lease_seconds": 5.0,
        "translate": store_errors.translate,
    }
    values.update(options)
    return JobRunner(store.jobs, store.leases, Shield(), **values)


async def _settled(store: MongoStore, tenant: str, job_id: str, timeout: float = 20.0) -> Job:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        job = await store.jobs.get(tenant, job_id)
        if job is not None and job.state in (JobState.SUCCEEDED, JobState.FAILED):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not settle within {timeout:g}s")


async def test_a_slow_job_is_run_by_one_of_two_runners_only(ferretdb: FerretDB) -> None:
    """The job outlasts its lease several times over; renewals keep the
    other runner (another connection, as another replica) away."""
    name = f"loom_jobs_{uuid.uuid4().hex[:10]}"
    stores = [connect(ferretdb.uri, name), connect(ferretdb.uri, name)]
    await stores[0].ensure_indexes()
    runs: list[str] = []

    async def slow(job: Job, _: Checkpoint) -> dict[str, Any]:
        runs.append(job.job_id)
        await asyncio.sleep(3.5)
        return {"done": True}

    runners = [_runner(s, lease_seconds=1.0) for s in stores]
    for runner in runners:
        runner.register("slow", slow)
    try:
        await runners[0].enqueue("t", "slow", {}, job_id="job_slow")
        for runner in runners:
            runner.start()
        job = await _settled(stores[1], "t", "job_slow")
        assert job.state is JobState.SUCCEEDED
        assert runs == ["job_slow"]
        assert job.attempts == 1
    finally:
        for runner, s in zip(runners, stores, strict=True):
            await runner.stop(0)
            await s.close()


async def test_a_runner_that_loses_its_lease_stops_and_writes_nothing(store: MongoStore) -> None:
    started = asyncio.Event()
    stopped: list[str] = []
    cancelled = asyncio.Event()

    async def endless(job: Job, checkpoint: Checkpoint) -> dict[str, Any]:
        await checkpoint({"step": 1})
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(job.job_id)
            cancelled.set()
            raise
        return {}

    runner = _runner(store, lease_seconds=0.6)
    runner.register("endless", endless)
    await runner.enqueue("t", "endless", {}, job_id="job_taken")
    runner.start()
    try:
        await asyncio.wait_for(started.wait(), 10)
        # Another replica's runner takes the job over (as after a stall).
        await store.db["leases"].update_one(
            {"_id": "job:job_taken"},
            {"$set": {"owner": "other", "expires": datetime.now(UTC) + timedelta(seconds=60)}},
        )
        await store.db["jobs"].update_one(
            {"_id": key("t", "job_taken")}, {"$set": {"owner": "other"}}
        )
        await asyncio.wait_for(cancelled.wait(), 10)
        assert stopped == ["job_taken"]
        await asyncio.sleep(0.3)  # anything it would still write has landed by now
        doc = await store.db["jobs"].find_one({"_id": key("t", "job_taken")})
        assert doc is not None
        assert doc["owner"] == "other"
        assert doc["state"] == JobState.RUNNING.value
        assert doc["checkpoint"] == {"step": 1}
    finally:
        await runner.stop(0)


async def test_a_dependency_that_stays_down_is_waited_for_past_max_attempts(
    store: MongoStore,
) -> None:
    outage = {"left": 8}

    async def flaky(job: Job, _: Checkpoint) -> dict[str, Any]:
        if outage["left"] > 0:
            outage["left"] -= 1
            if outage["left"] % 2:
                raise AutoReconnect("connection refused")  # the database, untranslated
            raise Unavailable("the memory store is unreachable")
        return {"ok": True}

    runner = _runner(store, max_attempts=2)
    runner.register("flaky", flaky)
    await runner.enqueue("t", "flaky", {}, job_id="job_flaky")
    runner.start()
    try:
        job = await _settled(store, "t", "job_flaky")
    finally:
        await runner.stop(0)
    assert job.state is JobState.SUCCEEDED
    assert outage["left"] == 0
    assert job.attempts == 1
    assert job.waits == 0


@pytest.mark.parametrize(
    ("error", "runs"),
    [
        (NotFound("assistant", "asst_gone"), 1),  # waiting will not bring it back
        (ValueError("the model returned an empty summary"), 3),  # max_attempts
    ],
)
async def test_errors_waiting_will_not_cure_fail_the_job(
    store: MongoStore, error: Exception, runs: int
) -> None:
    calls: list[int] = []

    async def broken(job: Job, _: Checkpoint) -> dict[str, Any]:
        calls.append(job.attempts)
        raise error

    runner = _runner(store, max_attempts=3)
    runner.register("broken", broken)
    await runner.enqueue("t", "broken", {}, job_id="job_broken")
    runner.start()
    try:
        job = await _settled(store, "t", "job_broken")
    finally:
        await runner.stop(0)
    assert job.state is JobState.FAILED
    assert len(calls) == runs
    assert type(error).__name__ in job.error


def test_database_errors_a_retry_can_cure_are_unavailable() -> None:
    busy = OperationFailure("database is locked (5) (SQLITE_BUSY)", code=1)
    assert isinstance(store_errors.translate(busy), Unavailable)
    assert isinstance(
        store_errors.translate(OperationFailure("not primary", code=10107)), Unavailable
    )
    assert isinstance(store_errors.translate(AutoReconnect("gone")), Unavailable)
    assert store_errors.translate(OperationFailure("bad $set", code=9)) is None


async def test_one_tenants_burst_does_not_hold_back_another(store: MongoStore) -> None:
    release = asyncio.Event()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    finished: list[str] = []
    two_busy = asyncio.Event()

    async def work(job: Job, _: Checkpoint) -> dict[str, Any]:
        running[job.tenant] = running.get(job.tenant, 0) + 1
        peak[job.tenant] = max(peak.get(job.tenant, 0), running[job.tenant])
        if running.get("busy") == 2:
            two_busy.set()
        try:
            if job.tenant == "busy":
                await release.wait()
        finally:
            running[job.tenant] -= 1
        finished.append(job.job_id)
        return {}

    runner = _runner(store, concurrency=4, tenant_concurrency=2)
    runner.register("work", work)
    for i in range(12):
        await runner.enqueue("busy", "work", {}, job_id=f"job_busy_{i:02d}")
    await runner.enqueue("quiet", "work", {}, job_id="job_quiet")
    runner.start()
    try:
        job = await _settled(store, "quiet", "job_quiet")
        assert job.state is JobState.SUCCEEDED
        # The quiet tenant's job ran while the busy tenant's burst waited.
        assert finished == ["job_quiet"]
        await asyncio.wait_for(two_busy.wait(), 10)
        await asyncio.sleep(0.5)  # polls go on; the cap holds
        assert peak["busy"] == 2
        release.set()
        for i in range(12):
            assert (await _settled(store, "busy", f"job_busy_{i:02d}")).state is JobState.SUCCEEDED
        assert peak["busy"] == 2
    finally:
        release.set()
        await runner.stop(0)


def test_fair_order_takes_tenants_in_turn() -> None:
    def job(tenant: str, n: int) -> Job:
        t = datetime.now(UTC)
        return Job(f"{tenant}{n}", "k", tenant, {}, JobState.PENDING, t, t, t)

    jobs = [job("a", 1), job("a", 2), job("a", 3), job("b", 1), job("c", 1), job("b", 2)]
    assert [j.job_id for j in fair_order(jobs)] == ["a1", "b1", "c1", "a2", "b2", "a3"]


async def test_jobs_cli_lists_and_retries_failed_jobs(
    store: MongoStore, ferretdb: FerretDB
) -> None:
    async def broken(job: Job, _: Checkpoint) -> dict[str, Any]:
        raise NotFound("thread", "thread_gone")

    runner = _runner(store)
    runner.register("broken", broken)
    for tenant, job_id in (("acme", "job_cli_1"), ("acme", "job_cli_2"), ("other", "job_cli_3")):
        await runner.enqueue(tenant, "broken", {}, job_id=job_id)
    runner.start()
    try:
        for tenant, job_id in (
            ("acme", "job_cli_1"),
            ("acme", "job_cli_2"),
            ("other", "job_cli_3"),
        ):
            assert (await _settled(store, tenant, job_id)).state is JobState.FAILED
    finally:
        await runner.stop(0)
    env = clean_env(LOOM_MONGODB_URI=ferretdb.uri, LOOM_MONGODB_DB=store.db.name)

    listed = await asyncio.to_thread(
        run_cli, ["jobs", "list", "--state", "failed", "--tenant", "acme"], env
    )
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == ["job_cli_1", "job_cli_2"], (
        listed.stdout + listed.stderr
    )
    assert all("\tfailed\t" in line and "NotFound" in line for line in lines)

    one = await asyncio.to_thread(run_cli, ["jobs", "retry", "job_cli_1"], env)
    assert one.returncode == 0, one.stderr
    job = await store.jobs.get("acme", "job_cli_1")
    assert job is not None
    assert (job.state, job.attempts) == (JobState.PENDING, 0)

    again = await asyncio.to_thread(run_cli, ["jobs", "retry", "job_cli_1"], env)
    assert again.returncode == 1
    assert "no failed job" in again.stderr

    rest = await asyncio.to_thread(run_cli, ["jobs", "retry", "--all-failed"], env)
    assert rest.returncode == 0, rest.stderr
    assert "re-queued 2 failed jobs" in rest.stdout
    assert await store.jobs.find(JobState.FAILED, None, 10) == []
