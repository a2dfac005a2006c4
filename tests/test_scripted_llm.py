"""Tests for tests/scripted_llm.py, driven by the real openai SDK over real HTTP."""

from __future__ import annotations

import asyncio
import gc
import http.client
import itertools
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.scripted_llm import EMBEDDING_DIM, Fail, Hang, Reply, ScriptedLLM, embedding_of

USER = [{"role": "user", "content": "hello scripted world"}]


@pytest.fixture
def llm() -> Iterator[ScriptedLLM]:
    with ScriptedLLM() as server:
        yield server


_opened: list[openai.OpenAI] = []


def client(server: ScriptedLLM | str, **kwargs: Any) -> openai.OpenAI:
    """A sync client of ``server`` (or of a base URL), closed when the test
    ends: a client left to the garbage collector leaves its socket open, and
    the ResourceWarning then fails whichever later test the collector runs in."""
    base_url = server if isinstance(server, str) else server.base_url
    c = openai.OpenAI(base_url=base_url, **{"api_key": "test", "max_retries": 0, **kwargs})
    _opened.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def aclient(server: ScriptedLLM, **kwargs: object) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, **kwargs)


# ------------------------------------------------------------------ streaming


def test_stream_concatenates_to_text_and_reports_usage(llm: ScriptedLLM) -> None:
    llm.script(Reply(text="The quick brown fox jumps."))
    stream = client(llm).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-test" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) == 5  # about one word per chunk
    assert "".join(pieces) == "The quick brown fox jumps."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        5,
        5,
    )
    assert chunks[-1].usage.total_tokens == 10
    assert llm.wait_for(lambda s: s.completed_streams == 1)
    assert llm.disconnects == 0


def test_stream_without_include_usage_has_no_usage_chunk(llm: ScriptedLLM) -> None:
    chunks = list(client(llm).chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_explicit_chunks_usage_and_finish_reason(llm: ScriptedLLM) -> None:
    llm.script(Reply(chunks=["Hel", "lo", " wor", "ld"], usage=(11, 22), finish_reason="length"))
    chunks = list(
        client(llm).chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert contents == ["Hel", "lo", " wor", "ld"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        11,
        22,
    )


def test_word_chunking_keeps_all_whitespace(llm: ScriptedLLM) -> None:
    text = "  leading, double  spaces\nnew line\ttab and trailing  "
    llm.script(Reply(text=text))
    chunks = list(client(llm).chat.completions.create(model="m", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_chunk_and_first_byte_delays_are_observable(llm: ScriptedLLM) -> None:
    llm.script(Reply(text="a b c d", first_byte_delay=0.3, chunk_delay=0.1))

    async def run() -> list[float]:
        async with aclient(llm) as c:
            start = time.monotonic()
            stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
            arrivals = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic() - start)
            return arrivals

    arrivals = asyncio.run(run())
    assert len(arrivals) == 4
    assert arrivals[0] >= 0.28  # headers held back by first_byte_delay
    assert arrivals[0] < 0.5  # ...but the first delta is flushed right away
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert all(gap >= 0.08 for gap in gaps), gaps


# --------------------------------------------------------------- non-streaming


def test_default_reply_echoes_last_user_message(llm: ScriptedLLM) -> None:
    completion = client(llm).chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-test"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "Echo: second question"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        6,
        3,
    )


def test_streamed_default_echo(llm: ScriptedLLM) -> None:
    chunks = list(client(llm).chat.completions.create(model="m", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hello scripted world"


def test_response_format_is_transparent(llm: ScriptedLLM) -> None:
    llm.script(Reply(text='{"answer": 42}'))
    completion = client(llm).chat.completions.create(
        model="m",
        messages=USER,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "a", "schema": {"type": "object"}},
        },
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    assert llm.requests[0].body is not None
    assert llm.requests[0].body["response_format"]["type"] == "json_schema"


def test_fifo_then_default_then_callable_default(llm: ScriptedLLM) -> None:
    c = client(llm)
    llm.script(Reply(text="one"), Reply(text="two"))
    assert llm.pending_steps == 2
    texts = [
        c.chat.completions.create(model="m", messages=USER).choices[0].message.content
        for _ in range(3)
    ]
    assert texts == ["one", "two", "Echo: hello scripted world"]

    llm.set_default(lambda body: Reply(text=f"model was {body['model']}"))
    assert (
        c.chat.completions.create(model="xyz", messages=USER).choices[0].message.content
        == "model was xyz"
    )
    llm.set_default(Fail(503, "down"))
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model="m", messages=USER)


def test_reset_clears_everything(llm: ScriptedLLM) -> None:
    c = client(llm)
    list(c.chat.completions.create(model="m", messages=USER, stream=True))
    llm.script(Fail(400))
    llm.set_default(Fail(500))
    llm.reset()
    assert (
        llm.requests,
        llm.completed_streams,
        llm.disconnects,
        llm.pending_steps,
    ) == ([], 0, 0, 0)
    assert (
        c.chat.completions.create(model="m", messages=USER)
        .choices[0]
        .message.content.startswith("Echo:")
    )


# ---------------------------------------------------------------------- errors


def test_fail_429_raises_rate_limit_error_with_retry_after_ms(llm: ScriptedLLM) -> None:
    llm.script(Fail(429, "slow down", retry_after_ms=1234))
    with pytest.raises(openai.RateLimitError) as info:
        client(llm).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after-ms"] == "1234"
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"] == "slow down"
    assert info.value.body["code"] == "rate_limit_exceeded"


def test_fail_500_raises_internal_server_error(llm: ScriptedLLM) -> None:
    llm.script(Fail(500, "boom"))
    with pytest.raises(openai.InternalServerError) as info:
        client(llm).chat.completions.create(model="m", messages=USER, stream=True)
    assert info.value.status_code == 500
    assert "retry-after-ms" not in info.value.response.headers
    assert "boom" in str(info.value)


def test_sdk_honours_retry_after_ms(llm: ScriptedLLM) -> None:
    llm.script(Fail(429, retry_after_ms=400), Reply(text="after retry"))
    c = client(llm, max_retries=1)
    completion = c.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == "after retry"
    first, second = llm.requests
    assert second.received_at - first.received_at >= 0.35


def test_hang_times_out_and_counts_a_disconnect(llm: ScriptedLLM) -> None:
    llm.script(Hang())
    start = time.monotonic()
    # The SDK turns httpx2.ReadTimeout into openai.APITimeoutError.
    with pytest.raises(openai.APITimeoutError):
        client(llm, timeout=0.5).chat.completions.create(model="m", messages=USER)
    assert time.monotonic() - start < 2
    assert llm.wait_for(lambda s: s.disconnects == 1)
    assert len(llm.requests) == 1


def test_hang_on_a_stream_async(llm: ScriptedLLM) -> None:
    llm.script(Hang())

    async def run() -> None:
        async with aclient(llm, timeout=0.5) as c:
            with pytest.raises(openai.APITimeoutError):
                await c.chat.completions.create(model="m", messages=USER, stream=True)

    asyncio.run(run())
    assert llm.wait_for(lambda s: s.disconnects == 1)


def test_break_after_cuts_the_stream_sync(llm: ScriptedLLM) -> None:
    llm.script(Reply(text="one two three four five", break_after=2))
    received: list[str] = []

    # openai 3.57 (which runs on httpx2, not httpx) wraps the transport's RemoteProtocolError
    # ("peer closed connection without sending complete message body (incomplete chunked
    # read)") into openai.APIConnectionError("Connection error.") while iterating the stream.
    def consume() -> None:
        for chunk in client(llm).chat.completions.create(model="m", messages=USER, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)

    with pytest.raises(openai.APIConnectionError) as info:
        consume()
    assert type(info.value.__cause__).__name__ == "RemoteProtocolError"
    assert received == ["one ", "two "]
    assert llm.aborted_streams == 1
    assert (llm.completed_streams, llm.disconnects) == (0, 0)


def test_break_after_cuts_the_stream_async(llm: ScriptedLLM) -> None:
    llm.script(Reply(text="one two three four five", break_after=2, chunk_delay=0.01))

    async def run() -> tuple[list[str], BaseException]:
        received: list[str] = []
        async with aclient(llm) as c:
            stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
            try:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        received.append(chunk.choices[0].delta.content)
            except openai.APIError as exc:  # inspected below
                return received, exc
        raise AssertionError("stream did not fail")

    received, exc = asyncio.run(run())
    # Same as sync: openai.APIConnectionError caused by httpx2.RemoteProtocolError.
    assert isinstance(exc, openai.APIConnectionError)
    assert type(exc.__cause__).__name__ == "RemoteProtocolError"
    assert received == ["one ", "two "]


def test_client_closing_a_stream_early_counts_a_disconnect(llm: ScriptedLLM) -> None:
    llm.script(Reply(text="a b c d e", chunk_delay=10.0))

    async def run() -> None:
        async with aclient(llm) as c:
            stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
            async for _chunk in stream:
                break
            await stream.close()

    start = time.monotonic()
    asyncio.run(run())
    # Noticed right away (the server watches the socket), not after the 10 s chunk delay.
    assert llm.wait_for(lambda s: s.disconnects == 1, timeout=2.0)
    assert time.monotonic() - start < 3
    assert llm.completed_streams == 0
    # ...and the server is still fine.
    assert client(llm).chat.completions.create(model="m", messages=USER).choices[0].message.content


def test_client_closing_during_first_byte_delay_counts_a_disconnect(
    llm: ScriptedLLM,
) -> None:
    llm.script(Reply(first_byte_delay=10.0))
    with pytest.raises(openai.APITimeoutError):
        client(llm, timeout=0.3).chat.completions.create(model="m", messages=USER, stream=True)
    assert llm.wait_for(lambda s: s.disconnects == 1, timeout=2.0)


# ------------------------------------------------------------------ tool calls

TOOL_CALLS = [
    {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
    {"id": "call_2", "name": "get_time", "arguments": {"tz": "Europe/Paris"}},
]


def test_tool_calls_streamed_reassemble(llm: ScriptedLLM) -> None:
    llm.script(Reply(tool_calls=TOOL_CALLS))
    calls: dict[int, dict[str, str]] = {}
    argument_deltas = 0
    finish_reason = None
    for chunk in client(llm).chat.completions.create(model="m", messages=USER, stream=True):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        assert not choice.delta.content
        finish_reason = choice.finish_reason or finish_reason
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
                assert delta.type == "function"
            if delta.function and delta.function.name:
                call["name"] += delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
                argument_deltas += 1
    assert finish_reason == "tool_calls"
    assert calls == {
        0: {"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_2", "name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
    }
    assert argument_deltas >= 4  # arguments arrive in 2+ pieces per call


def test_tool_calls_streamed_with_sdk_stream_helper(llm: ScriptedLLM) -> None:
    llm.script(Reply(tool_calls=TOOL_CALLS[:1]))
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    with client(llm).chat.completions.stream(model="m", messages=USER, tools=[tool]) as stream:
        for _event in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert llm.requests[0].body is not None
    assert llm.requests[0].body["tools"] == [tool]


def test_tool_calls_non_streaming(llm: ScriptedLLM) -> None:
    llm.script(Reply(tool_calls=TOOL_CALLS))
    completion = client(llm).chat.completions.create(model="m", messages=USER)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}'),
        ("call_2", "get_time", '{"tz": "Europe/Paris"}'),
    ]


# ------------------------------------------------------------------ recording


def test_recorded_requests(llm: ScriptedLLM) -> None:
    before = time.monotonic()
    c = client(llm)
    c.chat.completions.create(model="m1", messages=USER, temperature=0.5)
    messages = [
        *USER,
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": "again"},
    ]
    list(c.chat.completions.create(model="m2", messages=messages, stream=True))
    c.models.list()  # not a chat completion: not recorded

    first, second = llm.requests
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer test"
    assert first.headers["content-type"] == "application/json"
    assert first.body == {"model": "m1", "messages": USER, "temperature": 0.5}
    assert second.body is not None
    assert second.body["messages"] == messages
    assert second.body["stream"] is True
    assert before <= first.received_at <= second.received_at <= time.monotonic()


# ------------------------------------------------------------------- concurrency


def test_sixteen_concurrent_streams(llm: ScriptedLLM) -> None:
    llm.set_default(
        lambda body: Reply(text=f"stream {body['messages'][0]['content']} " * 10, chunk_delay=0.01)
    )

    async def one(c: openai.AsyncOpenAI, n: int) -> str:
        stream = await c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": str(n)}], stream=True
        )
        return "".join(
            [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        )

    async def run() -> list[str]:
        async with aclient(llm) as c:
            return await asyncio.gather(*(one(c, n) for n in range(16)))

    start = time.monotonic()
    texts = asyncio.run(run())
    elapsed = time.monotonic() - start
    assert texts == [f"stream {n} " * 10 for n in range(16)]
    assert llm.wait_for(lambda s: s.completed_streams == 16)
    assert llm.disconnects == 0
    # 20 chunks * 10 ms each: concurrent streams take ~0.2 s, serial ones would take 3.2 s.
    assert elapsed < 1.5, elapsed


# -------------------------------------------------------------------- raw HTTP


def test_models_endpoint(llm: ScriptedLLM) -> None:
    assert [m.id for m in client(llm).models.list()] == ["scripted-model"]


def test_embeddings_answer_at_once_with_deterministic_unit_vectors(llm: ScriptedLLM) -> None:
    texts = ["the cat sat", "the cat sat down", "quarterly revenue report"]
    response = client(llm).embeddings.create(model="scripted-embedding", input=texts)
    vectors = [d.embedding for d in sorted(response.data, key=lambda d: d.index)]
    assert [len(v) for v in vectors] == [EMBEDDING_DIM] * 3
    # The SDK asks for base64 (float32) unless told otherwise.
    assert vectors[0] == pytest.approx(embedding_of("the cat sat"), abs=1e-6)
    assert abs(sum(x * x for x in vectors[2]) - 1.0) < 1e-3

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert llm.requests == []  # not recorded, no step taken


def test_unknown_path_is_404_and_bad_json_is_400(llm: ScriptedLLM) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=5)
    conn.request("GET", "/v1/nope")
    response = conn.getresponse()
    assert response.status == 404
    assert "nope" in json.loads(response.read())["error"]["message"]

    conn.request(
        "POST",
        "/v1/chat/completions",
        body=b"{not json",
        headers={"content-type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 400
    assert json.loads(response.read())["error"]["type"] == "invalid_request_error"
    assert llm.requests[-1].body is None
    assert llm.pending_steps == 0
    conn.close()


def test_keep_alive_serves_many_requests_on_one_connection(llm: ScriptedLLM) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", llm.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for n in range(3):
        for stream in (False, True):
            body = json.dumps(
                {
                    "model": "m",
                    "messages": [{"role": "user", "content": f"n{n}"}],
                    "stream": stream,
                }
            )
            conn.request("POST", "/v1/chat/completions", body=body)
            response = conn.getresponse()
            assert response.status == 200
            raw = response.read().decode()  # http.client de-chunks the stream
            if stream:
                assert response.getheader("transfer-encoding") == "chunked"
                assert response.getheader("content-type") == "text/event-stream"
                events = re.findall(r"^data: (.*)$", raw, re.MULTILINE)
                assert events[-1] == "[DONE]"
                text = "".join(
                    json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
                )
            else:
                text = json.loads(raw)["choices"][0]["message"]["content"]
            assert text == f"Echo: n{n}"
    assert conn.sock is sock  # never reconnected
    conn.close()
    assert llm.wait_for(lambda s: s.completed_streams == 3)


def test_chunked_request_body_and_connection_close(llm: ScriptedLLM) -> None:
    body = json.dumps({"model": "m", "messages": USER}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    with socket.create_connection(("127.0.0.1", llm.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):  # the server closes after answering
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert json.loads(payload)["choices"][0]["message"]["content"] == "Echo: hello scripted world"


def test_abusive_clients_never_crash_the_server(
    llm: ScriptedLLM,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gc.collect()  # leftovers of earlier tests must not log into this one
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    capfd.readouterr()
    stream_request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
    )
    body = json.dumps({"model": "m", "messages": USER, "stream": True}).encode()
    llm.set_default(Reply(text="word " * 50, chunk_delay=0.02))

    def rst(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    for _ in range(5):
        socket.create_connection(("127.0.0.1", llm.port)).close()  # connect, say nothing
        with socket.create_connection(("127.0.0.1", llm.port)) as sock:  # half a request
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Le")
        with socket.create_connection(("127.0.0.1", llm.port)) as sock:  # garbage
            sock.sendall(b"\x00\x01\x02 nonsense\r\n\r\n")
            sock.recv(65536)
        sock = socket.create_connection(("127.0.0.1", llm.port))  # reset mid-stream
        sock.sendall(stream_request % (len(body), body))
        sock.recv(4096)
        rst(sock)
        sock = socket.create_connection(("127.0.0.1", llm.port))  # FIN mid-stream
        sock.sendall(stream_request % (len(body), body))
        sock.recv(4096)
        sock.close()

    assert llm.wait_for(lambda s: s.disconnects == 10, timeout=3), llm.disconnects
    llm.reset()
    assert client(llm).chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert capfd.readouterr().err == ""
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


# ----------------------------------------------------------------- lifecycle


def test_stop_is_idempotent_and_closes_hanging_connections() -> None:
    server = ScriptedLLM().start()
    server.script(Hang())

    async def run() -> BaseException | None:
        async with aclient(server, timeout=30) as c:
            task = asyncio.ensure_future(c.chat.completions.create(model="m", messages=USER))
            await asyncio.to_thread(server.wait_for, lambda s: bool(s.requests))
            start = time.monotonic()
            await asyncio.to_thread(server.stop)
            assert time.monotonic() - start < 2
            try:
                await task
            except openai.APIError as exc:  # inspected below
                return exc
        return None

    exc = asyncio.run(run())
    assert isinstance(exc, openai.APIConnectionError)
    assert server.disconnects == 0  # the server hung up, not the client
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = server.base_url


def test_restart_and_fixed_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ScriptedLLM(port=port)
    with server:
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert [m.id for m in client(server).models.list()] == ["scripted-model"]
    with server:  # can be started again after stop()
        assert (
            client(server)
            .chat.completions.create(model="m", messages=USER)
            .choices[0]
            .message.content
        )
    with (
        pytest.raises(OSError, match="already in use"),
        ScriptedLLM(port=port),
        ScriptedLLM(port=port),
    ):
        pass


def test_standalone_module_runs_until_ctrl_c() -> None:
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.scripted_llm",
            "--port",
            "0",
            "--text",
            "standalone hi",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/v1)", line)
        assert match, line
        base_url = match.group(1)
        models = client(base_url).models.list()
        assert [m.id for m in models] == ["scripted-model"]
        c = client(base_url)
        chunks = list(c.chat.completions.create(model="m", messages=USER, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "standalone hi"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert err == ""
    assert "stopped" in out
