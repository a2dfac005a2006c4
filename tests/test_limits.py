"""Call limits: the token bucket and stream slots as domain logic (with a
clock the test moves), then against the real server, each test on tenants
of its own whose limits are lowered through the per-tenant override (the
other tests run with the defaults): a burst then RESOURCE_EXHAUSTED with
RetryInfo, recovery after the refill, keys and tenants independent, the
stream cap on SendMessage and SubmitToolOutputs, health and reflection
never limited, and the api-keys CLI that sets the overrides."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from generated.loom.v1 import assistant_pb2, thread_pb2, tools_pb2
from service.core.errors import RateLimited, TooManyStreams
from service.core.ports import TenantLimits
from service.core.ratelimit import STREAM_RETRY_SECONDS, Limiter, Limits
from service.server import Loom
from tests.conftest import Api, error_info, eventually, expect_error, retry_delay
from tests.scripted_llm import Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB
from tests.support.process import clean_env, run_cli

NONE = TenantLimits()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------ domain logic


def test_a_key_gets_its_burst_then_waits_for_the_refill() -> None:
    clock = Clock()
    limiter = Limiter(Limits(rate=2.0, burst=3), clock)
    for _ in range(3):
        limiter.admit("k1", NONE)
    with pytest.raises(RateLimited) as caught:
        limiter.admit("k1", NONE)
    assert caught.value.retry_after == pytest.approx(0.5)
    assert caught.value.reason == "RATE_LIMITED"
    clock.now += 0.25
    with pytest.raises(RateLimited) as caught:
        limiter.admit("k1", NONE)
    assert caught.value.retry_after == pytest.approx(0.25)
    clock.now += 0.25
    limiter.admit("k1", NONE)  # one token came back, and only one
    with pytest.raises(RateLimited):
        limiter.admit("k1", NONE)
    limiter.admit("k2", NONE)  # another key has its own bucket
    clock.now += 60
    for _ in range(3):  # a bucket never holds more than its burst
        limiter.admit("k1", NONE)
    with pytest.raises(RateLimited):
        limiter.admit("k1", NONE)


def test_overrides_replace_the_defaults_field_by_field_and_zero_is_unlimited() -> None:
    defaults = Limits(rate=100.0, burst=200, streams=10)
    assert defaults.overridden(TenantLimits(burst=5)) == Limits(rate=100.0, burst=5, streams=10)
    assert defaults.overridden(TenantLimits(rate=0, streams=0)) == Limits(0, 200, 0)
    limiter = Limiter(Limits(rate=1.0, burst=1), Clock())
    for _ in range(1000):
        limiter.admit("k", TenantLimits(rate=0))
    limiter.admit("k", NONE)
    with pytest.raises(RateLimited):
        limiter.admit("k", NONE)
    limiter.admit("other", TenantLimits(rate=0))


def test_a_lowered_burst_applies_at_once() -> None:
    limiter = Limiter(Limits(rate=1.0, burst=100), Clock())
    limiter.admit("k", NONE)
    limiter.admit("k", TenantLimits(burst=1))
    with pytest.raises(RateLimited):
        limiter.admit("k", TenantLimits(burst=1))


def test_stream_slots_are_held_until_the_block_ends() -> None:
    limiter = Limiter(Limits(streams=2), Clock())
    with limiter.stream("acme", NONE), limiter.stream("acme", NONE):
        assert limiter.open_streams("acme") == 2
        with pytest.raises(TooManyStreams) as caught, limiter.stream("acme", NONE):
            pass
        assert caught.value.retry_after == STREAM_RETRY_SECONDS
        with limiter.stream("other", NONE):  # tenants are counted apart
            assert limiter.open_streams("other") == 1
        with limiter.stream("acme", TenantLimits(streams=3)):
            assert limiter.open_streams("acme") == 3
    assert limiter.open_streams("acme") == 0
    with pytest.raises(RuntimeError), limiter.stream("acme", NONE):
        raise RuntimeError("a failed stream frees its slot too")
    assert limiter.open_streams("acme") == 0
    unlimited = Limiter(Limits(streams=0), Clock())
    with unlimited.stream("acme", NONE), unlimited.stream("acme", NONE):
        assert unlimited.open_streams("acme") == 2


# ------------------------------------------------- against the real server


async def _tenant(loom: Loom, channel: aio.Channel, **limits: Any) -> tuple[str, Api]:
    """A new tenant with these overrides, and a client with one of its keys."""
    tenant = f"lim-{uuid.uuid4().hex[:12]}"
    if limits:
        await loom.keys.set_limits(tenant, **limits)
    return tenant, Api(channel, (await loom.keys.create(tenant)).secret)


async def _list(api: Api) -> Any:
    return await api.call(api.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest())


async def _rate_limited(api: Api) -> float:
    error = await expect_error(_list(api), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert "calls per second" in (error.details() or "")
    return retry_delay(error)


async def test_a_burst_then_rate_limited_with_retry_info_then_served_after_the_refill(
    loom: Loom, channel: aio.Channel
) -> None:
    # One token every 2 s: the burst is spent long before one comes back.
    _, api = await _tenant(loom, channel, rate=0.5, burst=3)
    for _ in range(3):
        await _list(api)
    delay = await _rate_limited(api)
    assert 0 < delay <= 2.0
    # Streams take a token too, and are refused before they start.
    await expect_error(api.send(content="hi"), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    await asyncio.sleep(delay + 0.05)
    await _list(api)


async def test_the_limit_holds_per_key_across_connections(loom: Loom, channel: aio.Channel) -> None:
    tenant, api = await _tenant(loom, channel, rate=0.1, burst=2)
    for _ in range(2):
        await _list(api)
    own = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    async with aio.insecure_channel(f"127.0.0.1:{loom.port}", options=own) as second:
        await _rate_limited(Api(second, api.key))
    # Another key of the same tenant has its own bucket.
    await _list(Api(channel, (await loom.keys.create(tenant)).secret))


async def test_two_tenants_are_limited_independently(loom: Loom, channel: aio.Channel) -> None:
    _, first = await _tenant(loom, channel, rate=0.1, burst=2)
    _, second = await _tenant(loom, channel, rate=0.1, burst=2)
    for _ in range(2):
        await _list(first)
    await _rate_limited(first)
    for _ in range(2):
        await _list(second)
    await _rate_limited(second)


async def test_health_and_reflection_are_never_limited(loom: Loom, channel: aio.Channel) -> None:
    _, api = await _tenant(loom, channel, rate=0.01, burst=1)
    await _list(api)
    await _rate_limited(api)
    health = health_pb2_grpc.HealthStub(channel)
    for _ in range(20):
        reply = await health.Check(health_pb2.HealthCheckRequest(), metadata=api.metadata)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    for _ in range(5):
        call = reflection.ServerReflectionInfo(metadata=api.metadata)
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        listed = await call.read()
        assert listed.list_services_response.service
        await call.done_writing()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SLOW = Reply(chunks=["slow "] * 400, chunk_delay=0.1)  # 40 s unless cancelled


async def _held(api: Api, **fields: Any) -> Any:
    """A SendMessage that has started (its first event read) and goes on."""
    call = api.threads.SendMessage(thread_pb2.SendMessageRequest(**fields), metadata=api.metadata)
    first = await call.read()
    assert first.HasField("started"), first
    return call


async def _pending_run(api: Api, llm: ScriptedLLM) -> tuple[str, str]:
    tool = json_format.ParseDict(WEATHER, tools_pb2.Tool())
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(name="Weather", tools=[tool])
        ),
    )
    llm.script(Reply(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": "{}"}]))
    events = await api.send(content="Weather?", assistant_id=created.assistant.assistant_id)
    required = events[-1].tool_calls_required
    return events[0].started.thread_id, required.run_id


def _submit(api: Api, thread_id: str, run_id: str) -> Any:
    return api.threads.SubmitToolOutputs(
        thread_pb2.SubmitToolOutputsRequest(
            thread_id=thread_id,
            run_id=run_id,
            tool_outputs=[tools_pb2.ToolOutput(tool_call_id="call_1", output="sunny")],
        ),
        metadata=api.metadata,
    )


async def test_reply_streams_past_the_tenant_cap_are_refused_until_one_ends(
    loom: Loom, channel: aio.Channel, llm: ScriptedLLM
) -> None:
    tenant, api = await _tenant(loom, channel, streams=2)
    thread_id, run_id = await _pending_run(api, llm)
    llm.set_default(SLOW)
    held = [await _held(api, content=f"long story {i}") for i in range(2)]
    assert loom.limiter.open_streams(tenant) == 2
    for refused in (api.send(content="one more"), _submit(api, thread_id, run_id)):
        error = await expect_error(refused, grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS")
        assert error_info(error)["limit"] == "2"
        assert 0 < retry_delay(error) <= 5
    # Calls that are not reply streams go on, and so do other tenants' streams.
    await _list(api)
    _, other = await _tenant(loom, channel, streams=2)
    llm.script(Reply(text="quick"))
    assert (await other.send(content="meanwhile"))[-1].HasField("completed")
    held[0].cancel()
    assert await eventually(lambda: loom.limiter.open_streams(tenant) == 1)
    llm.set_default(Reply(text="It is sunny."))
    events = [event async for event in _submit(api, thread_id, run_id)]
    assert events[-1].HasField("completed")
    held[1].cancel()
    assert await eventually(lambda: loom.limiter.open_streams(tenant) == 0)


async def test_the_session_server_runs_with_the_default_limits(loom: Loom) -> None:
    assert loom.limiter.defaults == Limits(rate=100.0, burst=200, streams=100)


# ------------------------------------------------------------------ the CLI


async def test_api_keys_cli_sets_shows_and_resets_a_tenant_s_overrides(
    ferretdb: FerretDB, loom: Loom, channel: aio.Channel
) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:12]}"
    env = clean_env(LOOM_MONGODB_URI=ferretdb.uri, LOOM_MONGODB_DB=loom.settings.mongodb_db)

    async def cli(*args: str) -> Any:
        return await asyncio.to_thread(
            run_cli, ["api-keys", "limits", "--tenant", tenant, *args], env
        )

    done = await cli("--rate", "0.1", "--burst", "2", "--streams", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "  rate    0.1 calls/s per key (override)" in lines, done.stdout
    assert "  burst   2 calls at once per key (override)" in lines, done.stdout
    assert "  streams 3 streams (override)" in lines, done.stdout
    assert await loom.keys.limits(tenant) == TenantLimits(rate=0.1, burst=2, streams=3)

    # The server reads the override with the key: a burst of 2, then refused.
    api = Api(channel, (await loom.keys.create(tenant)).secret)
    for _ in range(2):
        await _list(api)
    await _rate_limited(api)

    done = await cli("--streams", "0")  # one field changes, the others stay
    assert done.returncode == 0, done.stderr
    assert await loom.keys.limits(tenant) == TenantLimits(rate=0.1, burst=2, streams=0)
    shown = await cli()
    assert "  streams 0 streams (override)" in shown.stdout.splitlines(), shown.stdout
    done = await cli("--reset")
    assert done.returncode == 0, done.stderr
    assert (
        "  rate    100 calls/s per key (default, LOOM_RATE_LIMIT_PER_KEY)"
        in done.stdout.splitlines()
    )
    assert await loom.keys.limits(tenant) == NONE

    for bad, field in (
        (["--burst", "0"], "burst"),
        (["--rate", "-1"], "rate"),
        (["--rate", "nan"], "rate"),
    ):
        refused = await cli(*bad)
        assert refused.returncode == 2, refused.stdout
        assert field in refused.stderr
        assert "Traceback" not in refused.stderr
    bad_tenant = ["api-keys", "limits", "--tenant", "no spaces!", "--rate", "1"]
    refused = await asyncio.to_thread(run_cli, bad_tenant, env)
    assert refused.returncode == 2, refused.stdout
    assert "tenant must be" in refused.stderr
