"""Health follows the database, and a call made while the database is down
fails fast with UNAVAILABLE (LOOM_MONGODB_TIMEOUT), not at the caller's
deadline; everything recovers by itself when the database is back."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from generated.loom.v1 import thread_pb2
from service.config import Settings
from service.server import SERVICES
from tests.conftest import Api, expect_error, make_settings, new_tenant_key, start_loom
from tests.scripted_llm import ScriptedLLM
from tests.support.ferretdb import FerretDB

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _statuses(channel: aio.Channel) -> set[int]:
    stub = health_pb2_grpc.HealthStub(channel)
    replies = [
        await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        for name in SERVICES
    ]
    return {r.status for r in replies}


async def _until(channel: aio.Channel, status: int, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await _statuses(channel) == {status}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health did not become {status} within {within:g}s")


async def test_health_and_calls_follow_the_database_down_and_back(llm: ScriptedLLM) -> None:
    database = FerretDB().start()
    loom = await start_loom(
        make_settings(database, llm, mongodb_db="loom_health", mongodb_timeout=1.0)
    )
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            await api.send(content="before the outage")
            assert await _statuses(channel) == {SERVING}

            database.kill()
            await _until(channel, NOT_SERVING, within=10)
            # A caller with a 5 s deadline hears UNAVAILABLE, not DEADLINE_EXCEEDED.
            await expect_error(
                api.call(api.threads.ListThreads, thread_pb2.ListThreadsRequest(), timeout=5),
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            )

            database.restart()
            await _until(channel, SERVING, within=20)
            listed = await api.call(
                api.threads.ListThreads, thread_pb2.ListThreadsRequest(), timeout=10
            )
            assert len(listed.threads) == 1
            events = await api.send(content="after the outage")
            assert events[-1].completed.message.status == thread_pb2.MESSAGE_STATUS_COMPLETE
    finally:
        await loom.stop(0)
        database.stop()


def test_mongodb_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError, match="mongodb_timeout"):
        Settings(mongodb_timeout=0)
    assert Settings().mongodb_timeout == 2.0
