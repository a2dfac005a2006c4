"""OpenTelemetry end to end: spans read from the SDK's in-memory exporter
(and, in one test, from a real Jaeger over OTLP), metrics from an in-memory
reader, and the JSON log lines, for a Loom wired as in production.

The global tracer and meter providers can be installed once per process, so
one session fixture installs them (``otel``); the traced Loom is built after
it, so that its MongoDB client is instrumented too.
"""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import openai
import pytest
from google.protobuf import json_format
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from generated.loom.v1 import (
    assistant_pb2,
    common_pb2,
    generation_pb2,
    memory_pb2,
    memory_pb2_grpc,
    thread_pb2,
)
from service.core.errors import Unavailable
from service.core.summaries import SUMMARY_PROMPT
from service.server import Loom, build
from service.telemetry import (
    CAPTURE_CONTENT_ENV,
    Telemetry,
    TelemetryConfig,
    TelemetryConfigError,
    annotate,
    configure_logging,
    setup,
    tracer,
)
from service.telemetry import span as new_span
from service.telemetry.setup import resource
from tests.conftest import MODEL_DIR, Api, eventually, expect_error, make_settings, new_tenant_key
from tests.scripted_llm import Fail, Reply, ScriptedLLM
from tests.support.ferretdb import FerretDB, free_port
from tests.support.jaeger import Jaeger, jaeger_bin
from tests.support.openai_http import openai_for
from tests.support.process import LoomProcess, clean_env

SEND = "/loom.v1.ThreadService/SendMessage"
MODEL = "scripted-model"
EXTRACT_MARK = "From the exchange below"
RECONCILE_MARK = "For each new fact"
CHAT_USAGE = (41, 7)
EXTRACT_USAGE = (230, 12)


@dataclass
class OTel:
    telemetry: Telemetry
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader


@pytest.fixture(scope="session")
def otel() -> Iterator[OTel]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = setup(
        TelemetryConfig(metric_interval=0.1), span_exporter=spans, metric_reader=reader
    )
    yield OTel(telemetry, spans, reader)
    telemetry.shutdown()


async def _start(ferretdb: FerretDB, llm: ScriptedLLM, telemetry: Telemetry) -> Loom:
    loom = build(make_settings(ferretdb, llm), telemetry)
    await loom.start()
    return loom


@pytest.fixture(scope="session")
async def traced(ferretdb: FerretDB, llm: ScriptedLLM, otel: OTel) -> AsyncIterator[Loom]:
    """A Loom with tracing and metrics on (content not captured)."""
    loom = await _start(ferretdb, llm, otel.telemetry)
    yield loom
    await loom.stop(0)


class Traced(Api):
    """Api for the traced Loom, plus the MemoryService stub."""

    def __init__(self, channel: aio.Channel, key: str) -> None:
        super().__init__(channel, key)
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)

    async def send_with(
        self, metadata: tuple[tuple[str, str], ...], **fields: Any
    ) -> list[thread_pb2.SendMessageResponse]:
        call = self.threads.SendMessage(
            thread_pb2.SendMessageRequest(**fields), metadata=self.metadata + metadata
        )
        return [event async for event in call]


@pytest.fixture
async def client(traced: Loom, otel: OTel) -> AsyncIterator[Traced]:
    otel.spans.clear()
    async with aio.insecure_channel(f"127.0.0.1:{traced.port}") as channel:
        yield Traced(channel, await new_tenant_key(traced))


def _system(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return str(messages[0]["content"]) if messages and messages[0]["role"] == "system" else ""


def _route(facts: dict[str, list[str]]) -> Any:
    """The scripted model: chat replies, fact extraction, reconciliation,
    each with known token usage."""

    def route(body: dict[str, Any]) -> Reply:
        system = _system(body)
        if EXTRACT_MARK in system:
            exchange = body["messages"][-1]["content"]
            found = next((f for said, f in facts.items() if said in exchange), [])
            return Reply(text=json.dumps({"facts": found}), usage=EXTRACT_USAGE)
        if RECONCILE_MARK in system:
            return Reply(text='{"operations": []}', usage=(5, 1))
        return Reply(text="Noted, thank you.", usage=CHAT_USAGE)

    return route


async def _memory_assistant(api: Api) -> str:
    created = await api.call(
        api.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Chef",
                instructions="You suggest recipes.",
                memory_mode=common_pb2.MEMORY_MODE_AUTO,
            )
        ),
    )
    return str(created.assistant.assistant_id)


async def _settled(api: Traced, operation_id: str) -> memory_pb2.MemoryOperation:
    for _ in range(300):
        got = await api.call(
            api.memory.GetMemoryOperation,
            memory_pb2.GetMemoryOperationRequest(operation_id=operation_id),
        )
        if got.operation.state in (
            memory_pb2.MemoryOperation.STATE_SUCCEEDED,
            memory_pb2.MemoryOperation.STATE_FAILED,
        ):
            return got.operation
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {operation_id} never finished")


# -- span helpers --------------------------------------------------------------


def _trace(otel: OTel, trace_id: int) -> list[ReadableSpan]:
    return [s for s in otel.spans.get_finished_spans() if s.context.trace_id == trace_id]


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = _named(spans, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {sorted(s.name for s in spans)}"
    return found[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if _parent_id(s) == parent.context.span_id]


def _descendants(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    found: list[ReadableSpan] = []
    frontier = [root]
    while frontier:
        kids = [s for p in frontier for s in _children(spans, p)]
        found += kids
        frontier = kids
    return found


def _server_span(otel: OTel, method: str = SEND) -> ReadableSpan:
    servers = [
        s for s in otel.spans.get_finished_spans() if s.kind is SpanKind.SERVER and s.name == method
    ]
    assert len(servers) == 1, [s.name for s in servers]
    return servers[0]


async def _wait_for_span(otel: OTel, trace_id: int, name: str, timeout: float = 15.0) -> None:
    found = await eventually(lambda: bool(_named(_trace(otel, trace_id), name)), timeout=timeout)
    assert found, f"no {name!r} span in trace; got {sorted(s.name for s in _trace(otel, trace_id))}"


def _attribute_values(spans: list[ReadableSpan]) -> str:
    """Every attribute and event attribute value of ``spans``, as one string."""
    values: list[str] = []
    for span in spans:
        values += [str(v) for v in (span.attributes or {}).values()]
        for event in span.events:
            values += [str(v) for v in (event.attributes or {}).values()]
        if span.status.description:
            values.append(span.status.description)
    return "\n".join(values)


def _points(otel: OTel, name: str) -> list[Any]:
    data = otel.metrics.get_metrics_data()
    points: list[Any] = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    points += list(metric.data.data_points)
    return points


def _histogram_count(otel: OTel, name: str, **attributes: Any) -> int:
    return sum(
        p.count
        for p in _points(otel, name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


def _histogram_sum(otel: OTel, name: str, **attributes: Any) -> float:
    return sum(
        p.sum
        for p in _points(otel, name)
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


# -- the trace of one message ---------------------------------------------------


async def _send_with_memory(
    client: Traced, llm: ScriptedLLM, otel: OTel, content: str, facts: list[str]
) -> tuple[list[thread_pb2.SendMessageResponse], ReadableSpan]:
    llm.set_default(_route({content: facts}))
    assistant_id = await _memory_assistant(client)
    otel.spans.clear()
    events = await client.send(content=content, assistant_id=assistant_id, user_id="u1")
    assert events[-1].HasField("completed"), events[-1]
    assert await eventually(lambda: any(s.name == SEND for s in otel.spans.get_finished_spans())), (
        "the SendMessage span never ended"
    )
    return events, _server_span(otel)


async def test_send_message_with_memory_auto_is_one_span_tree(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    content = "I am allergic to peanuts and I live in Porto."
    events, server = await _send_with_memory(
        client, llm, otel, content, ["The user is allergic to peanuts."]
    )
    assert server.parent is None  # no caller context: Loom's span is the root
    assert server.kind is SpanKind.SERVER
    assert server.attributes is not None
    assert server.attributes["rpc.service"] == "loom.v1.ThreadService"
    assert server.attributes["rpc.method"] == "SendMessage"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
    spans = _trace(otel, server.context.trace_id)
    # The reply's spans; the extraction job (under its enqueue span) may be
    # running already and is the next test's subject.
    enqueue = _one(spans, "enqueue memory.extract")
    job = _descendants(spans, enqueue)
    below = [s for s in _descendants(spans, server) if s not in job]
    names = {s.name for s in below}

    # Memory recall: a child of the RPC, with the embedding of the query and Chroma under it.
    recall = _one(below, "memory.recall")
    assert _parent_id(recall) == server.context.span_id
    under_recall = _descendants(spans, recall)
    embeds = [s for s in under_recall if s.name == "embeddings all-MiniLM-L6-v2"]
    assert embeds, sorted(s.name for s in under_recall)
    embed_attrs = embeds[0].attributes or {}
    assert embed_attrs["gen_ai.operation.name"] == "embeddings"
    assert embed_attrs["gen_ai.request.model"] == "all-MiniLM-L6-v2"
    assert embed_attrs["loom.embeddings.batch_size"] == 1
    chroma = [s for s in under_recall if s.name.startswith("chroma ")]
    assert chroma, sorted(s.name for s in under_recall)
    assert all((s.attributes or {})["db.system.name"] == "chroma" for s in chroma)
    assert all(s.kind is SpanKind.CLIENT for s in chroma)

    # The episodic write of the user's message: a Chroma upsert, started
    # with the first delta; its vector is the recall query's (the same
    # text), so the model does not run a second time for it.
    remember = _one(below, "memory.remember")
    under_remember = {s.name for s in _descendants(spans, remember)}
    assert "chroma add" in under_remember  # a new memory: an add, not an upsert
    assert "embeddings all-MiniLM-L6-v2" not in under_remember
    assert remember.start_time is not None
    assert recall.end_time is not None
    assert remember.start_time >= recall.end_time

    # The model call, with the GenAI conventions and the scripted usage.
    chat = _one(below, f"chat {MODEL}")
    assert _parent_id(chat) == server.context.span_id
    assert chat.kind is SpanKind.CLIENT
    attrs = chat.attributes or {}
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.input_tokens"] == CHAT_USAGE[0]
    assert attrs["gen_ai.usage.output_tokens"] == CHAT_USAGE[1]
    assert tuple(attrs["gen_ai.response.finish_reasons"]) == ("stop",)  # type: ignore[arg-type]
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == llm.port
    assert attrs["loom.llm.attempts"] == 1
    ttft = attrs["gen_ai.response.time_to_first_chunk"]
    assert isinstance(ttft, float)
    assert 0 < ttft <= (chat.end_time - chat.start_time) / 1e9  # type: ignore[operator]
    assert [e.name for e in chat.events] == ["gen_ai.first_chunk"]
    done = events[-1].completed.message
    assert done.usage.input_tokens == CHAT_USAGE[0]
    assert done.usage.output_tokens == CHAT_USAGE[1]

    # MongoDB commands (PyMongo's async client) are children in the same trace.
    mongo = [s for s in below if (s.attributes or {}).get("db.system") == "mongodb"]
    assert len(mongo) >= 3, sorted(names)
    assert any(_parent_id(s) == server.context.span_id for s in mongo)
    assert {str((s.attributes or {}).get("db.mongodb.collection")) for s in mongo} >= {
        "threads",
        "messages",
    }

    # The extraction job is queued from this trace.
    assert enqueue in below
    assert enqueue.kind is SpanKind.PRODUCER
    assert (enqueue.attributes or {})["loom.job.id"] == events[-1].completed.memory_operation_id


async def test_extraction_job_is_a_child_of_and_linked_to_the_send_message_trace(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    content = "My sister is called Eva."
    events, server = await _send_with_memory(
        client, llm, otel, content, ["The user has a sister called Eva."]
    )
    trace_id = server.context.trace_id
    op = await _settled(client, events[-1].completed.memory_operation_id)
    assert op.state == memory_pb2.MemoryOperation.STATE_SUCCEEDED
    assert len(op.added_memory_ids) == 1
    await _wait_for_span(otel, trace_id, "run memory.extract")
    spans = _trace(otel, trace_id)
    enqueue = _one(spans, "enqueue memory.extract")
    run = _one(spans, "run memory.extract")
    assert run.kind is SpanKind.CONSUMER
    assert _parent_id(run) == enqueue.context.span_id
    assert [link.context.span_id for link in run.links] == [enqueue.context.span_id]
    assert run.links[0].context.trace_id == trace_id
    run_attrs = run.attributes or {}
    assert run_attrs["loom.job.kind"] == "memory.extract"
    assert run_attrs["loom.job.state"] == "succeeded"
    assert run_attrs["loom.job.attempt"] == 1
    assert run.start_time >= server.start_time  # type: ignore[operator]

    # The job's own work: extraction (with its model call), reconciliation, writes.
    extract = _one(spans, "memory.extract")
    reconcile = _one(spans, "memory.reconcile")
    apply = _one(spans, "memory.apply")
    assert {_parent_id(extract), _parent_id(reconcile), _parent_id(apply)} == {run.context.span_id}
    assert (extract.attributes or {})["loom.memory.facts"] == 1
    assert (reconcile.attributes or {})["loom.memory.add"] == 1
    extraction_chat = [s for s in _children(spans, extract) if s.name == f"chat {MODEL}"]
    assert len(extraction_chat) == 1
    chat_attrs = extraction_chat[0].attributes or {}
    assert chat_attrs["gen_ai.request.stream"] is False
    assert chat_attrs["gen_ai.usage.input_tokens"] == EXTRACT_USAGE[0]
    assert chat_attrs["gen_ai.usage.output_tokens"] == EXTRACT_USAGE[1]
    assert "chroma add" in {s.name for s in _descendants(spans, apply)}  # a new memory
    job_mongo = [
        s for s in _children(spans, run) if (s.attributes or {}).get("db.system") == "mongodb"
    ]
    assert job_mongo, "the job's own MongoDB commands belong to its span"
    # The poller's MongoDB commands are never traced: no root span but the RPC.
    assert [s.name for s in spans if s.parent is None] == [SEND]
    assert not [
        s
        for s in otel.spans.get_finished_spans()
        if s.parent is None and (s.attributes or {}).get("db.mongodb.collection") == "jobs"
    ]


async def test_summary_fold_job_is_traced_from_the_message_that_queued_it(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    summary_mark = SUMMARY_PROMPT.split("\n", 1)[0]

    def route(body: dict[str, Any]) -> Reply:
        if _system(body).startswith(summary_mark):
            return Reply(text="They talked about numbers.", usage=(300, 6))
        return Reply(text="Short reply.", usage=CHAT_USAGE)

    llm.set_default(route)
    created = await client.call(
        client.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(instructions="Be brief.", context_window=1024)
        ),
    )
    thread_id = ""
    for i in range(40):
        events = await client.send(
            content=f"Message {i}: " + "tell me about the number seven and its friends " * 6,
            assistant_id=created.assistant.assistant_id if not thread_id else "",
            thread_id=thread_id,
        )
        thread_id = events[0].started.thread_id
        if _named(list(otel.spans.get_finished_spans()), "enqueue context.fold"):
            break
    enqueued = _named(list(otel.spans.get_finished_spans()), "enqueue context.fold")
    assert enqueued, "no summary was ever queued"
    trace_id = enqueued[0].context.trace_id
    await _wait_for_span(otel, trace_id, "run context.fold")
    spans = _trace(otel, trace_id)
    server = _one(spans, SEND)  # the message that queued the fold
    assert enqueued[0] in _descendants(spans, server)
    run = _named(spans, "run context.fold")[0]
    assert _parent_id(run) == enqueued[0].context.span_id
    assert [link.context.span_id for link in run.links] == [enqueued[0].context.span_id]
    summarize = _one(_children(spans, run), "summarize")
    assert (summarize.attributes or {})["loom.thread.id"] == thread_id
    assert (summarize.attributes or {})["loom.summary.messages"] >= 1  # type: ignore[operator]
    chat = _one(_children(spans, summarize), f"chat {MODEL}")
    assert (chat.attributes or {})["gen_ai.usage.input_tokens"] == 300


async def test_traceparent_in_metadata_makes_loom_spans_children_of_the_caller(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    llm.set_default(Reply(text="Hi.", usage=CHAT_USAGE))
    trace_id = secrets.randbits(128) | 1
    caller_span = secrets.randbits(64) | 1
    traceparent = f"00-{trace_id:032x}-{caller_span:016x}-01"
    events = await client.send_with((("traceparent", traceparent),), content="Hello there")
    assert events[-1].HasField("completed")
    assert await eventually(lambda: bool(_named(_trace(otel, trace_id), SEND)))
    spans = _trace(otel, trace_id)
    server = _one(spans, SEND)
    assert server.parent is not None
    assert server.parent.span_id == caller_span
    assert server.parent.is_remote
    chat = _one(spans, f"chat {MODEL}")
    assert _parent_id(chat) == server.context.span_id
    # Every span Loom made for the call is in the caller's trace.
    assert not [s for s in otel.spans.get_finished_spans() if s.name == SEND and s not in spans]


async def test_an_http_response_is_one_trace_like_a_send_message(
    client: Traced, traced: Loom, llm: ScriptedLLM, otel: OTel
) -> None:
    """The HTTP door (OpenAI's SDK, unchanged) is traced as the gRPC calls
    are: one SERVER span per request, the caller's traceparent its parent,
    every span of the reply below it, errors' reasons on it."""
    llm.set_default(Reply(text="Hi.", usage=CHAT_USAGE))
    trace_id = secrets.randbits(128) | 1
    caller_span = secrets.randbits(64) | 1
    traceparent = f"00-{trace_id:032x}-{caller_span:016x}-01"
    ok = {"http.route": "/v1/responses", "http.response.status_code": 200}
    before = _histogram_count(otel, "http.server.request.duration", **ok)
    async with openai_for(traced, str(client.key)) as sdk:
        made = await sdk.responses.create(
            model=MODEL, input="Hello there", extra_headers={"traceparent": traceparent}
        )
        with pytest.raises(openai.NotFoundError):
            await sdk.conversations.retrieve("thread_000000000000000000000000")
    assert made.output_text == "Hi."
    assert await eventually(lambda: bool(_named(_trace(otel, trace_id), "POST /v1/responses")))
    spans = _trace(otel, trace_id)
    server = _one(spans, "POST /v1/responses")
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert server.parent.span_id == caller_span
    assert server.attributes is not None
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/responses"
    assert server.attributes["http.response.status_code"] == 200
    chat = _one(spans, f"chat {MODEL}")
    assert _parent_id(chat) == server.context.span_id
    below = _descendants(spans, server)
    assert any((s.attributes or {}).get("db.system") == "mongodb" for s in below)
    missing = [
        s
        for s in otel.spans.get_finished_spans()
        if s.name == "GET /v1/conversations/{conversation_id}"
    ]
    assert len(missing) == 1
    assert missing[0].attributes is not None
    assert missing[0].attributes["http.response.status_code"] == 404
    assert missing[0].attributes["loom.error_reason"] == "THREAD_NOT_FOUND"
    assert "error.type" not in missing[0].attributes  # a caller's error, not the server's
    assert await eventually(
        lambda: _histogram_count(otel, "http.server.request.duration", **ok) == before + 1
    )


async def test_content_and_keys_are_not_recorded_by_default(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    content = "My secret recipe uses saffron-and-cardamom-7731."
    llm.set_default(Reply(text="A reply about zanzibar-vanilla-4412.", usage=CHAT_USAGE))
    events = await client.send(content=content)
    assert events[-1].HasField("completed")
    await eventually(lambda: any(s.name == SEND for s in otel.spans.get_finished_spans()))
    spans = otel.spans.get_finished_spans()
    assert _named(list(spans), f"chat {MODEL}")
    recorded = _attribute_values(list(spans))
    assert "saffron-and-cardamom-7731" not in recorded
    assert "zanzibar-vanilla-4412" not in recorded
    assert client.key
    assert client.key not in recorded
    assert not [s for s in spans if "gen_ai.input.messages" in (s.attributes or {})]
    assert not [s for s in spans if "gen_ai.output.messages" in (s.attributes or {})]


async def test_content_is_recorded_with_the_genai_opt_in(
    ferretdb: FerretDB, llm: ScriptedLLM, otel: OTel
) -> None:
    capture = replace(
        otel.telemetry,
        config=replace(otel.telemetry.config, capture_content=True),
        meter_provider=None,
    )
    loom = await _start(ferretdb, llm, capture)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            api = Api(channel, await new_tenant_key(loom))
            llm.set_default(Reply(text="Try the lentil soup.", usage=CHAT_USAGE))
            otel.spans.clear()
            events = await api.send(content="What should I cook tonight?")
            assert events[-1].HasField("completed")
            assert await eventually(
                lambda: bool(_named(list(otel.spans.get_finished_spans()), SEND))
            )
    finally:
        await loom.stop(0)
    chat = _one(list(otel.spans.get_finished_spans()), f"chat {MODEL}")
    attrs = chat.attributes or {}
    inputs = json.loads(str(attrs["gen_ai.input.messages"]))
    assert inputs[-1] == {
        "role": "user",
        "parts": [{"type": "text", "content": "What should I cook tonight?"}],
    }
    assert "gen_ai.system_instructions" in attrs
    outputs = json.loads(str(attrs["gen_ai.output.messages"]))
    assert outputs == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": "Try the lentil soup."}],
            "finish_reason": "stop",
        }
    ]


async def test_retries_are_visible_on_the_model_span(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    llm.script(
        Fail(status=503, message="busy"),
        Fail(status=429, retry_after_ms=1),
        Reply(text="Finally.", usage=CHAT_USAGE),
    )
    events = await client.send(content="Are you there?")
    assert events[-1].HasField("completed")
    assert await eventually(lambda: any(s.name == SEND for s in otel.spans.get_finished_spans()))
    chat = _one(list(otel.spans.get_finished_spans()), f"chat {MODEL}")
    retries = [e for e in chat.events if e.name == "retry"]
    assert [(e.attributes or {})["error.type"] for e in retries] == [
        "InternalServerError",
        "RateLimitError",
    ]
    assert [(e.attributes or {})["loom.retry.attempt"] for e in retries] == [1, 2]
    assert (chat.attributes or {})["loom.llm.attempts"] == 3
    assert "error.type" not in (chat.attributes or {})
    assert chat.status.status_code is StatusCode.UNSET


async def test_a_failed_model_call_records_error_type_and_the_rpc_code(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    llm.script(Fail(status=400, message="context_length_exceeded"))
    await expect_error(
        client.threads.SendMessage(
            thread_pb2.SendMessageRequest(content="Too long?"), metadata=client.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert await eventually(lambda: any(s.name == SEND for s in otel.spans.get_finished_spans()))
    spans = list(otel.spans.get_finished_spans())
    chat = _one(spans, f"chat {MODEL}")
    assert (chat.attributes or {})["error.type"] == "BadRequestError"
    assert chat.status.status_code is StatusCode.ERROR
    server = _server_span(otel)
    attrs = server.attributes or {}
    assert attrs["rpc.grpc.status_code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert attrs["loom.error_reason"] == "MODEL_REJECTED_REQUEST"
    assert _parent_id(chat) == server.context.span_id


async def test_health_checks_are_not_traced(client: Traced, traced: Loom, otel: OTel) -> None:
    stub = health_pb2_grpc.HealthStub(client.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await client.call(client.assistants.ListAssistants, assistant_pb2.ListAssistantsRequest())
    assert await eventually(
        lambda: any(
            s.name == "/loom.v1.AssistantService/ListAssistants"
            for s in otel.spans.get_finished_spans()
        )
    )
    assert not [s for s in otel.spans.get_finished_spans() if "grpc.health" in s.name]


async def test_metrics_rpc_duration_tokens_first_chunk_streams_recall_and_jobs(
    client: Traced, traced: Loom, llm: ScriptedLLM, otel: OTel
) -> None:
    ok = {"rpc.method": "loom.v1.ThreadService/SendMessage", "rpc.response.status_code": "OK"}
    calls_before = _histogram_count(otel, "rpc.server.call.duration", **ok)
    by_model = {"gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL}
    input_before = _histogram_sum(
        otel, "gen_ai.client.token.usage", **by_model, **{"gen_ai.token.type": "input"}
    )
    output_before = _histogram_sum(
        otel, "gen_ai.client.token.usage", **by_model, **{"gen_ai.token.type": "output"}
    )
    first_before = _histogram_count(otel, "gen_ai.client.operation.time_to_first_chunk")
    recall_before = _histogram_count(otel, "loom.memory.recall.duration")

    # A slow reply: the stream is counted as active while it runs.
    llm.set_default(Reply(chunks=["one ", "two ", "three"], chunk_delay=0.3, usage=CHAT_USAGE))
    assistant_id = await _memory_assistant(client)
    sending = asyncio.ensure_future(
        client.send(content="Count to three.", assistant_id=assistant_id, user_id="u1")
    )
    streams = "loom.rpc.active_streams"
    assert await eventually(lambda: sum(p.value for p in _points(otel, streams)) >= 1)
    events = await sending
    assert events[-1].HasField("completed")
    assert await eventually(lambda: sum(p.value for p in _points(otel, streams)) == 0)

    assert await eventually(
        lambda: _histogram_count(otel, "rpc.server.call.duration", **ok) == calls_before + 1
    )
    assert (
        _histogram_sum(
            otel, "gen_ai.client.token.usage", **by_model, **{"gen_ai.token.type": "input"}
        )
        - input_before
        >= CHAT_USAGE[0]
    )
    assert (
        _histogram_sum(
            otel, "gen_ai.client.token.usage", **by_model, **{"gen_ai.token.type": "output"}
        )
        - output_before
        >= CHAT_USAGE[1]
    )
    assert _histogram_count(otel, "gen_ai.client.operation.time_to_first_chunk") > first_before
    assert _histogram_count(otel, "loom.memory.recall.duration") == recall_before + 1

    # An error is counted under its code.
    await expect_error(
        client.call(
            client.threads.GetThread,
            thread_pb2.GetThreadRequest(thread_id="thread_" + "0" * 24),
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await eventually(
        lambda: (
            _histogram_count(
                otel,
                "rpc.server.call.duration",
                **{
                    "rpc.method": "loom.v1.ThreadService/GetThread",
                    "rpc.response.status_code": "NOT_FOUND",
                },
            )
            >= 1
        )
    )

    # The job queue gauges, sampled from the job store.
    assert traced.backlog is not None
    await traced.backlog.sample()
    depth = _points(otel, "loom.jobs.queue.depth")
    age = _points(otel, "loom.jobs.queue.age")
    assert len(depth) == 1
    assert depth[0].value >= 0
    assert len(age) == 1
    assert age[0].value >= 0


async def test_one_json_log_line_per_rpc_with_trace_ids_and_no_content(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    import logging

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    levels = {n: logging.getLogger(n).level for n in ("openai", "chromadb", "pymongo", "httpx2")}
    buffer = io.StringIO()
    configure_logging("DEBUG", stream=buffer)
    try:
        llm.set_default(Reply(text="Bright reply tangerine-5510.", usage=CHAT_USAGE))
        events = await client.send(content="Tell me about quince-paste-9921.")
        assert events[-1].HasField("completed")
        assert await eventually(lambda: '"rpc.method": "' + SEND in buffer.getvalue())
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert await eventually(lambda: bool(_named(list(otel.spans.get_finished_spans()), SEND)))
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert lines, "nothing was logged"
    rpc_lines = [line for line in lines if line.get("rpc.method") == SEND]
    assert len(rpc_lines) == 1, rpc_lines
    line = rpc_lines[0]
    assert line["level"] == "INFO"
    assert line["rpc.code"] == "OK"
    assert line["duration_ms"] > 0
    assert line["tenant"].startswith("t-")
    server = _server_span(otel)
    assert line["trace_id"] == f"{server.context.trace_id:032x}"
    assert line["span_id"] == f"{server.context.span_id:016x}"
    text = buffer.getvalue()
    assert "quince-paste-9921" not in text
    assert "tangerine-5510" not in text
    assert client.key
    assert client.key not in text


async def test_annotate_sets_attributes_on_the_current_span(otel: OTel) -> None:
    otel.spans.clear()
    with tracer("tests").start_as_current_span("fit prompt"):
        annotate(prompt_dropped_messages=3, prompt_summary_ready=False)
        annotate({"custom.name": "x"})
    annotate(outside_any_span=True)  # a no-op, never an error
    span = _one(list(otel.spans.get_finished_spans()), "fit prompt")
    assert dict(span.attributes or {}) == {
        "loom.prompt_dropped_messages": 3,
        "loom.prompt_summary_ready": False,
        "custom.name": "x",
    }


async def test_failed_spans_keep_library_messages_out_but_loom_messages_in(otel: OTel) -> None:
    otel.spans.clear()
    quoted = "-".join(("users", "own", "words", "4471"))  # never in the source as one string
    with (
        pytest.raises(ValueError, match=quoted),
        new_span(tracer("tests"), "library failure"),
    ):
        raise ValueError(f"could not parse: {quoted}")
    with pytest.raises(Unavailable), new_span(tracer("tests"), "loom failure"):
        raise Unavailable("the model endpoint failed (HTTP 503); retry later")
    finished = list(otel.spans.get_finished_spans())
    library = _one(finished, "library failure")
    assert library.status.status_code is StatusCode.ERROR
    assert library.status.description == "ValueError"
    assert (library.attributes or {})["error.type"] == "ValueError"
    assert quoted not in _attribute_values([library])
    assert [e.name for e in library.events] == ["exception"]
    loom = _one(finished, "loom failure")
    assert loom.status.description == "the model endpoint failed (HTTP 503); retry later"


# -- configuration --------------------------------------------------------------


def test_config_reads_only_the_standard_variables() -> None:
    config = TelemetryConfig.from_env(
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "console,otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=ai",
            CAPTURE_CONTENT_ENV: "TRUE",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
        }
    )
    assert config.traces == ("otlp",)
    assert config.metrics == ("console", "otlp")
    assert config.capture_content
    assert config.metric_interval == 15.0
    off = TelemetryConfig.from_env({})
    assert off == TelemetryConfig()
    assert (off.traces, off.metrics, off.capture_content) == ((), (), False)
    assert TelemetryConfig.from_env({"OTEL_TRACES_EXPORTER": "none"}).traces == ()


def test_config_rejects_bad_values_naming_each_variable() -> None:
    with pytest.raises(TelemetryConfigError) as caught:
        TelemetryConfig.from_env(
            {
                "OTEL_TRACES_EXPORTER": "jaeger",
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317",
                "OTEL_TRACES_SAMPLER": "sometimes",
                "OTEL_RESOURCE_ATTRIBUTES": "novalue",
                CAPTURE_CONTENT_ENV: "yes please",
            }
        )
    named = [name for name, _ in caught.value.problems]
    assert named == [
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
        "OTEL_RESOURCE_ATTRIBUTES",
        CAPTURE_CONTENT_ENV,
    ]
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        TelemetryConfig.from_env(
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}
        )


def test_resource_defaults_to_service_loom_and_honours_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    made = resource().attributes
    assert made["service.name"] == "loom"
    assert made["deployment.environment"] == "test"
    assert made["telemetry.sdk.name"] == "opentelemetry"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "loom-eu")
    assert resource().attributes["service.name"] == "loom-eu"
    monkeypatch.delenv("OTEL_SERVICE_NAME")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    assert resource().attributes["service.name"] == "from-attributes"


def test_setup_refuses_a_second_install(otel: OTel) -> None:
    with pytest.raises(RuntimeError, match="already installed"):
        setup(TelemetryConfig(), span_exporter=InMemorySpanExporter())
    assert setup(TelemetryConfig()).tracing is False  # nothing asked: nothing installed


def test_bad_otel_variable_stops_loom_at_start_naming_it(tmp_path: Path) -> None:
    from tests.support.process import run_cli

    env = clean_env(
        LOOM_LISTEN=f"127.0.0.1:{free_port()}",
        OTEL_TRACES_EXPORTER="zipkin",
        OTEL_TRACES_SAMPLER="sometimes",
    )
    done = run_cli([], env, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "loom: invalid configuration:" in done.stderr
    assert "  OTEL_TRACES_EXPORTER: must be otlp, console or none" in done.stderr
    assert "  OTEL_TRACES_SAMPLER: must be one of" in done.stderr


# -- a real backend: OTLP to Jaeger, read back through its query API -----------


@pytest.fixture(scope="module")
def jaeger() -> Iterator[Jaeger]:
    if not jaeger_bin().exists():  # fails, never skips, like grpcurl and FerretDB
        pytest.fail(
            f"Jaeger all-in-one not found at {jaeger_bin()}: run `make setup` (or `make "
            "jaeger`), or point LOOM_JAEGER_BIN at a jaeger-all-in-one v1.76.0 binary",
            pytrace=False,
        )
    server = Jaeger().start()
    yield server
    server.stop()


def _jaeger_span(trace: dict[str, Any], name: str) -> dict[str, Any]:
    found = [s for s in trace["spans"] if s["operationName"] == name]
    assert len(found) == 1, sorted(s["operationName"] for s in trace["spans"])
    return found[0]


def _jaeger_parent(span: dict[str, Any]) -> str | None:
    refs = [r for r in span.get("references") or [] if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags") or []}


def test_traces_reach_jaeger_over_otlp_and_read_back_as_one_tree(
    jaeger: Jaeger, ferretdb: FerretDB, llm: ScriptedLLM, tmp_path: Path
) -> None:
    llm.set_default(Reply(text="Sunny, 21 degrees.", usage=CHAT_USAGE))
    port = free_port()
    env = clean_env(
        LOOM_LISTEN=f"127.0.0.1:{port}",
        LOOM_MONGODB_URI=ferretdb.uri,
        LOOM_MONGODB_DB=f"loom_jaeger_{uuid.uuid4().hex[:8]}",
        LOOM_LLM_BASE_URL=llm.base_url,
        LOOM_LLM_MODEL=MODEL,
        LOOM_DEV_API_KEY="jaeger-test-key",
        LOOM_DATA_DIR=str(tmp_path / "data"),
        LOOM_EMBEDDING_MODEL_DIR=str(MODEL_DIR),
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_grpc,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        OTEL_SERVICE_NAME="loom",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment=e2e",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    loom = LoomProcess(env, tmp_path, "loom-jaeger").wait_ready()
    trace_id = f"{secrets.randbits(128) | 1:032x}"
    caller = f"{secrets.randbits(64) | 1:016x}"
    try:
        with loom.channel() as channel:
            from generated.loom.v1 import thread_pb2_grpc

            stub = thread_pb2_grpc.ThreadServiceStub(channel)
            events = list(
                stub.SendMessage(
                    thread_pb2.SendMessageRequest(content="What is the weather like?"),
                    metadata=(
                        ("x-api-key", "jaeger-test-key"),
                        ("traceparent", f"00-{trace_id}-{caller}-01"),
                    ),
                    timeout=30,
                )
            )
        assert events[-1].HasField("completed")
        deadline = time.monotonic() + 30
        trace = None
        while time.monotonic() < deadline:
            trace = jaeger.trace(trace_id)
            names = {s["operationName"] for s in (trace or {}).get("spans", [])}
            if {SEND, f"chat {MODEL}"} <= names:
                break
            time.sleep(0.2)
        assert trace is not None, f"trace {trace_id} never reached Jaeger\n{jaeger.output()}"
    finally:
        assert loom.terminate() == 0, loom.output()
    # The process's log: JSON lines, the RPC's line in the caller's trace.
    lines = [json.loads(line) for line in loom.stderr_path.read_text().splitlines() if line]
    rpc = [line for line in lines if line.get("rpc.method") == SEND]
    assert len(rpc) == 1, lines
    assert rpc[0]["trace_id"] == trace_id
    assert rpc[0]["rpc.code"] == "OK"
    assert "What is the weather like?" not in loom.output()
    assert "loom" in jaeger.services()
    listed = jaeger.traces("loom")
    assert trace_id in {t["traceID"] for t in listed}

    server = _jaeger_span(trace, SEND)
    assert _jaeger_parent(server) == caller  # the caller's span, from traceparent
    chat = _jaeger_span(trace, f"chat {MODEL}")
    assert _jaeger_parent(chat) == server["spanID"]
    tags = _tags(chat)
    assert tags["gen_ai.operation.name"] == "chat"
    assert tags["gen_ai.usage.input_tokens"] == CHAT_USAGE[0]
    assert tags["gen_ai.usage.output_tokens"] == CHAT_USAGE[1]
    assert tags["span.kind"] == "client"
    mongo = [s for s in trace["spans"] if _tags(s).get("db.system") == "mongodb"]
    assert mongo
    assert all(_jaeger_parent(s) == server["spanID"] for s in mongo)
    process = trace["processes"][server["processID"]]
    assert process["serviceName"] == "loom"
    assert {"key": "deployment.environment", "type": "string", "value": "e2e"} in process["tags"]


async def test_a_prompt_that_drops_messages_says_so_on_the_rpc_span(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    llm.set_default(Reply(text="A short answer."))
    created = await client.call(
        client.assistants.CreateAssistant,
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                context_window=512,
                context_strategy=assistant_pb2.CONTEXT_STRATEGY_TRUNCATE,
            )
        ),
    )
    assistant_id = created.assistant.assistant_id
    first = await client.send(content="Opening words.", assistant_id=assistant_id)
    thread_id = first[0].started.thread_id
    for i in range(12):
        await client.send(content=f"A long enough message number {i}. " * 6, thread_id=thread_id)
    otel.spans.clear()
    await client.send(content="And the last one?", thread_id=thread_id)
    attributes = dict(_server_span(otel).attributes or {})
    assert int(attributes["loom.prompt_dropped_messages"]) > 0
    assert attributes["loom.prompt_summary_ready"] is False


async def test_the_model_span_names_the_generation_settings_sent(
    client: Traced, llm: ScriptedLLM, otel: OTel
) -> None:
    generation = json_format.ParseDict(
        {
            "temperature": 0.25,
            "maxOutputTokens": 64,
            "stop": ["END"],
            "seed": 9,
            "responseFormat": {"jsonObject": {}},
        },
        generation_pb2.GenerationSettings(),
    )
    llm.script(Reply(text="{}", usage=CHAT_USAGE))
    otel.spans.clear()
    events = await client.send(content="JSON, please.", generation=generation)
    assert events[-1].HasField("completed")
    assert await eventually(lambda: any(s.name == SEND for s in otel.spans.get_finished_spans()))
    attrs = _one(list(otel.spans.get_finished_spans()), f"chat {MODEL}").attributes or {}
    assert attrs["gen_ai.request.temperature"] == 0.25
    assert attrs["gen_ai.request.max_tokens"] == 64
    assert tuple(attrs["gen_ai.request.stop_sequences"]) == ("END",)  # type: ignore[arg-type]
    assert attrs["gen_ai.request.seed"] == 9
    assert attrs["gen_ai.output.type"] == "json"
    assert "gen_ai.request.top_p" not in attrs  # not set: not sent, not recorded
