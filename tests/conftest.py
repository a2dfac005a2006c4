"""Shared fixtures: one real FerretDB, one scripted model server and one Loom
gRPC server (grpc.aio on a free port) for the whole session; a fresh tenant
and API key per test, so tests never see each other's data."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import hypothesis
import pytest
from grpc import aio

from generated.loom.v1 import assistant_pb2_grpc, thread_pb2, thread_pb2_grpc
from service.config import Settings
from service.memory.embeddings import OnnxMiniLM
from service.server import Loom, build
from tests.scripted_llm import ScriptedLLM
from tests.support.embedding import model_dir
from tests.support.ferretdb import FerretDB
from tests.support.fuzzing import MAX_MESSAGE_CHARS as FUZZ_MESSAGE_CHARS
from tests.support.fuzzing import STARTED, STATS, machine, register_profiles
from tests.support.threaded import ThreadedLoom

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# Hypothesis: "ci" unless `--hypothesis-profile long` (make fuzz) says otherwise.
register_profiles()
hypothesis.settings.load_profile("ci")

DEV_KEY = "loom-test-dev-key"
REPO = Path(__file__).resolve().parents[1]
# Chroma's default embedding model, shipped beside the repository for offline use.
MODEL_DIR = Path(
    os.environ.get("LOOM_EMBEDDING_MODEL_DIR", REPO.parent / "shared/models/all-MiniLM-L6-v2/onnx")
)


def make_settings(ferretdb: FerretDB, llm: ScriptedLLM | None, **overrides: Any) -> Settings:
    """Settings for an in-process server on a free port, with a database of
    its own unless ``mongodb_db`` names one: each server here has its own
    embedded Chroma (its own ``data_dir``), and a server on another's
    database would run that one's memory jobs (extraction, forgetting an
    expired thread) against the wrong memory store. Replicas that must
    share a database pass the other's ``mongodb_db``."""
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "http_listen": "127.0.0.1:0",  # the OpenAI-shaped HTTP door (tests/test_http_*.py)
        "mongodb_uri": ferretdb.uri,
        "mongodb_db": f"loom_test_{uuid.uuid4().hex[:8]}",
        "llm_base_url": llm.base_url if llm else None,
        "llm_api_key": None,
        "llm_model": "scripted-model",
        "llm_timeout": 2.0,
        "llm_max_retries": 2,
        "llm_retry_delay": 0.01,
        "dev_api_key": DEV_KEY,
        "lease_seconds": 30.0,
        "shutdown_grace": 2.0,
        "job_poll_seconds": 0.05,
        "job_retry_delay": 0.05,
        "job_lease_seconds": 2.0,
        "embedding_model_dir": str(MODEL_DIR),
        "data_dir": tempfile.mkdtemp(prefix="loom-data-"),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def ferretdb() -> Iterator[FerretDB]:
    server = FerretDB().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def embedder() -> Iterator[OnnxMiniLM]:
    """all-MiniLM-L6-v2 in this process, loaded once for the tests that
    embed or index directly (a server builds its own)."""
    model = OnnxMiniLM(model_dir())
    yield model
    model.close()


@pytest.fixture(scope="session")
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_llm(request: pytest.FixtureRequest) -> None:
    if "llm" in request.fixturenames:
        request.getfixturevalue("llm").reset()


async def start_loom(settings: Settings) -> Loom:
    loom = build(settings)
    await loom.start()
    return loom


@pytest.fixture(scope="session")
async def loom(ferretdb: FerretDB, llm: ScriptedLLM) -> AsyncIterator[Loom]:
    server = await start_loom(make_settings(ferretdb, llm, mongodb_db="loom_test"))
    yield server
    await server.stop(0)


@pytest.fixture(scope="session")
def threaded_loom(ferretdb: FerretDB, llm: ScriptedLLM) -> Iterator[ThreadedLoom]:
    """A Loom of its own on a thread of its own, for the synchronous
    property tests (test_fuzz, test_isolation)."""
    settings = make_settings(
        ferretdb,
        llm,
        mongodb_db="loom_fuzz",
        max_message_chars=FUZZ_MESSAGE_CHARS,
        # Call limits would answer RESOURCE_EXHAUSTED to the tests' pace,
        # which says nothing about the input.
        rate_limit_per_key=0,
        max_streams_per_tenant=0,
    )
    server = ThreadedLoom(settings).start()
    yield server
    server.stop()


class Api:
    """Stubs bound to one channel and one API key."""

    def __init__(self, channel: aio.Channel, key: str | None) -> None:
        self.channel = channel
        self.key = key
        self.metadata: tuple[tuple[str, str], ...] = (("x-api-key", key),) if key else ()
        self.assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        self.threads = thread_pb2_grpc.ThreadServiceStub(channel)

    def call(self, method: Any, request: Any, **kwargs: Any) -> Any:
        return method(request, metadata=self.metadata, **kwargs)

    async def send(self, **fields: Any) -> list[thread_pb2.SendMessageResponse]:
        """SendMessage, collecting every event of the stream."""
        call = self.threads.SendMessage(
            thread_pb2.SendMessageRequest(**fields), metadata=self.metadata
        )
        return [event async for event in call]


@pytest.fixture(scope="session")
async def channel(loom: Loom) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as ch:
        yield ch


async def new_tenant_key(loom: Loom) -> str:
    created = await loom.keys.create(f"t-{uuid.uuid4().hex[:12]}")
    return created.secret


@pytest.fixture
async def api(loom: Loom, channel: aio.Channel) -> Api:
    """A client for a brand-new tenant."""
    return Api(channel, await new_tenant_key(loom))


def error_info(error: aio.AioRpcError) -> dict[str, Any]:
    """The ErrorInfo detail of a failed call, as a dict."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return {"reason": info.reason, "domain": info.domain, **info.metadata}
    raise AssertionError(f"no ErrorInfo on {error.code()}: {error.details()}")


def retry_delay(error: aio.AioRpcError) -> float:
    """The RetryInfo detail of a failed call, in seconds."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return float(info.retry_delay.ToTimedelta().total_seconds())
    raise AssertionError(f"no RetryInfo on {error.code()}: {error.details()}")


async def expect_error(
    awaitable: Any, code: grpc.StatusCode, reason: str | None = None
) -> aio.AioRpcError:
    """Await a unary call or drain a stream; assert it fails with ``code``."""

    async def drain() -> None:
        if hasattr(awaitable, "__aiter__"):
            async for _ in awaitable:
                pass
        else:
            await awaitable

    with pytest.raises(aio.AioRpcError) as caught:
        await drain()
    error = caught.value
    assert error.code() == code, f"{error.code()}: {error.details()}"
    assert error.details(), "an error must say what went wrong"
    if reason is not None:
        assert error_info(error)["reason"] == reason
    return error


async def eventually(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` without blocking the event loop (the in-process
    server shares it) until it is true or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fuzz tests' figures, when any ran: examples, statuses, failures,
    time and the machine."""
    if not (STATS["examples"] or STATS["steps"]):
        return
    codes = ", ".join(
        f"{k.removeprefix('code ')} {v}" for k, v in sorted(STATS.items()) if k.startswith("code ")
    )
    profile = hypothesis.settings.get_current_profile_name()
    write = terminalreporter.write_line
    if STATS["examples"]:
        write(f"fuzz ({profile} profile): {STATS['examples']} calls fuzzed; answered: {codes}")
    if STATS["steps"]:
        rules = ", ".join(
            f"{k.removeprefix('rule ')} {v}"
            for k, v in sorted(STATS.items())
            if k.startswith("rule ")
        )
        write(f"isolation: {STATS['runs']} histories, {STATS['steps']} steps ({rules})")
    failed = len(terminalreporter.stats.get("failed", []))
    took = time.monotonic() - STARTED
    write(f"{profile} profile: {failed} failing tests; {took:.0f} s on {machine()}")
