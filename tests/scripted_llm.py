"""A scripted, OpenAI-compatible HTTP server for Loom's integration tests and benchmarks.

Loom talks to its model through the real ``openai.AsyncOpenAI`` client. ``ScriptedLLM``
stands in for the model provider: it speaks the Chat Completions wire protocol over real
HTTP/1.1 on 127.0.0.1 (keep-alive, chunked server-sent events), so everything between
Loom and the socket is exercised exactly as in production.

Scripting model
---------------
Every ``POST /v1/chat/completions`` request (with a JSON object body; anything else
gets a 400 and consumes nothing) is answered by one *step*:

* ``Reply``  -- a successful completion (streamed or not, as the request asks), with
  optional pacing (``first_byte_delay``, ``chunk_delay``), explicit chunks, tool calls,
  usage, or ``break_after`` to cut the TCP connection mid-stream.
* ``Fail``   -- an HTTP error with an OpenAI-style JSON error body (and optionally a
  ``retry-after-ms`` header).
* ``Hang``   -- read the request and never answer, until the client gives up.

Steps are taken from a FIFO filled with ``script(...)``; when it is empty the *default*
step is used (``Reply()``, i.e. echo the last user message, unless changed with
``set_default``, which also accepts a callable that builds a step from the request body).

``POST /v1/embeddings`` answers with deterministic vectors (``embedding_of``: hashed
words, normalised; ``dimensions`` wide, 384 by default), at once, so benchmarks can run
Loom's memory writes with the embedding cost taken out (as float32 base64 when the
request asks for ``encoding_format: base64``, as OpenAI does), or after
``set_embedding_delay`` seconds, so tests can catch a long write half-way. Embedding
requests are not recorded and take no step.

The server records every chat-completions request (``requests``) and counts responses
the client abandoned (``disconnects``), streams sent to the end (``completed_streams``)
and streams it cut on purpose (``aborted_streams``). Counters and recorded requests are
updated before the client can observe the corresponding response, except
``disconnects``, which is noticed asynchronously: poll it with ``wait_for``.

It runs its own asyncio event loop in a daemon thread, so it can be driven from plain
synchronous tests, from pytest-asyncio tests (which have their own loop) and from
benchmark programs alike; all public methods are thread-safe::

    with ScriptedLLM() as llm:
        llm.script(Reply(text="Hello there"), Fail(status=429, retry_after_ms=10), Hang())
        client = openai.AsyncOpenAI(base_url=llm.base_url, api_key="test")
        ...
        assert llm.requests[0].body["messages"][-1]["content"] == "hi"

Run it standalone (default replies) for manual demos and benchmarks::

    python -m tests.scripted_llm --port 8089
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http
import itertools
import json
import logging
import math
import re
import signal
import struct
import threading
import time
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

__all__ = [
    "EMBEDDING_DIM",
    "MODEL_ID",
    "Fail",
    "Hang",
    "RecordedRequest",
    "Reply",
    "ScriptedLLM",
    "Step",
    "StepSource",
    "embedding_of",
]

log = logging.getLogger(__name__)

MODEL_ID = "scripted-model"

_CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_MODELS_PATHS = frozenset({"/v1/models", "/models"})
_EMBEDDING_PATHS = frozenset({"/v1/embeddings", "/embeddings"})
EMBEDDING_DIM = 384
_MAX_HEADER_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024
_READ_SIZE = 64 * 1024
# Splits text into ~one word per chunk, keeping every whitespace character somewhere,
# so that "".join(chunks) == text.
_WORD_CHUNKS = re.compile(r"\s*\S+\s*|\s+")


# --------------------------------------------------------------------------- steps


@dataclass
class Reply:
    """A successful chat completion."""

    text: str | None = None
    """Reply text; ``None`` echoes: ``"Echo: " + <content of the last user message>``."""
    chunks: list[str] | None = None
    """Explicit streaming chunks (overrides ``text``); otherwise ``text`` is split per word."""
    chunk_delay: float = 0.0
    """Seconds slept between streamed chunks (content and tool-call pieces)."""
    first_byte_delay: float = 0.0
    """Seconds slept before the response headers are sent."""
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens); ``None`` counts whitespace-separated words."""
    finish_reason: str = "stop"
    """Finish reason; with ``tool_calls`` the default ``"stop"`` becomes ``"tool_calls"``."""
    break_after: int | None = None
    """Streaming only: send this many content chunks, then drop the TCP connection."""
    tool_calls: list[dict[str, Any]] | None = None
    """``[{"id": "call_1", "name": "get_weather", "arguments": "{...}"}]`` (arguments may
    also be a dict, which is JSON-encoded; ``id`` defaults to ``call_<n>``)."""


@dataclass
class Fail:
    """An HTTP error response with an OpenAI error body ``{"error": {...}}``."""

    status: int = 500
    message: str = "scripted failure"
    retry_after_ms: int | None = None
    """When set, sent as the ``retry-after-ms`` header (honoured by the openai SDK)."""
    first_byte_delay: float = 0.0
    """Seconds slept before the error is sent."""


@dataclass
class Hang:
    """Read the request, then never answer (until the client disconnects or the server stops)."""


Step = Reply | Fail | Hang
StepSource = Step | Callable[[dict[str, Any]], Step]


@dataclass
class RecordedRequest:
    """A chat-completions request as received by the server."""

    method: str
    path: str
    headers: dict[str, str]
    """Header names lower-cased (repeated headers joined with ", ")."""
    body: dict[str, Any] | None
    """Parsed JSON body (``None`` if it was not a JSON object)."""
    received_at: float
    """``time.monotonic()`` when the full request had been read."""


# --------------------------------------------------------------------- helpers


def _text_of(content: Any) -> str:
    """The text of a message ``content``: a string, or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict)]


def _echo_text(body: dict[str, Any]) -> str:
    for message in reversed(_messages(body)):
        if message.get("role") == "user":
            return "Echo: " + _text_of(message.get("content"))
    return "Echo: "


def _prompt_words(body: dict[str, Any]) -> int:
    return sum(len(_text_of(m.get("content")).split()) for m in _messages(body))


def embedding_of(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for ``text``: each lowercase word adds one
    to a slot picked by a hash of it, so texts sharing words point alike."""
    # Only the slots a word lands in are computed: rounding all of them took
    # 0.8 s per 1,000 texts, which benchmarks then counted as Loom's.
    counts = Counter(zlib.crc32(w.encode()) % dim for w in re.findall(r"\w+", text.lower()))
    norm = math.sqrt(sum(c * c for c in counts.values())) or 1.0
    vector = [0.0] * dim
    for slot, count in counts.items():
        vector[slot] = round(count / norm, 5)
    return vector


def _base64(vector: list[float]) -> str:
    """A vector as OpenAI's ``encoding_format: base64`` gives it: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _as_is(vector: list[float]) -> list[float]:
    return vector


def _split_arguments(arguments: str) -> list[str]:
    """Split tool-call arguments into at least two pieces, as OpenAI streams them."""
    size = max(1, -(-len(arguments) // 3))
    pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    while len(pieces) < 2:
        pieces.append("")
    return pieces


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str


def _tool_calls(reply: Reply) -> list[_ToolCall]:
    calls = []
    for n, spec in enumerate(reply.tool_calls or [], start=1):
        arguments = spec.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        calls.append(_ToolCall(str(spec.get("id") or f"call_{n}"), str(spec["name"]), arguments))
    return calls


def _error_body(status: int, message: str) -> dict[str, Any]:
    if status == 429:
        kind, code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        kind, code = "server_error", None
    elif status == 404:
        kind, code = "invalid_request_error", "not_found"
    else:
        kind, code = "invalid_request_error", None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _ClientGone(Exception):
    """The client closed or reset the connection before we finished answering."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Parse a request line and header block into (method, target, version, headers)."""
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _BadRequest(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise _BadRequest(505, "only HTTP/1.x is supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "malformed header line")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return method.upper(), target, version, headers


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    """Read whatever is available; errors (e.g. connection reset) count as EOF."""
    try:
        return await reader.read(_READ_SIZE)
    except (ConnectionError, OSError):
        return b""


class _Conn:
    """One client connection: our own read buffer plus peer-close detection.

    At most one ``reader.read`` is ever in flight (``_read_task``). While a response is
    being produced that same pending read doubles as the "has the client gone away?"
    probe; any bytes it returns (a pipelined request) are kept in ``buf``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False
        self._read_task: asyncio.Task[bytes] | None = None

    def _pending_read(self) -> asyncio.Task[bytes]:
        if self._read_task is None:
            self._read_task = asyncio.ensure_future(_read_some(self.reader))
        return self._read_task

    def _collect(self) -> None:
        assert self._read_task is not None
        assert self._read_task.done()
        data = self._read_task.result()
        self._read_task = None
        if data:
            self.buf += data
        else:
            self.eof = True

    async def fill(self) -> bool:
        """Read more bytes into ``buf``; False at EOF."""
        if self.eof:
            return False
        await self._pending_read()
        self._collect()
        return not self.eof

    def peer_closed(self) -> bool:
        """Non-blocking: has the client closed (or reset) the connection?"""
        if self.eof:
            return True
        if self._read_task is None:
            self._pending_read()  # start probing from now on
        elif self._read_task.done():
            self._collect()
        return self.eof or self.writer.transport.is_closing()

    async def wait_closed(self, within: float | None) -> bool:
        """Wait up to ``within`` seconds (forever if None); True if the client closed."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while not self.eof:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            done, _ = await asyncio.wait({self._pending_read()}, timeout=remaining)
            if not done:
                return False
            self._collect()
        return True

    async def pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds; raise ``_ClientGone`` as soon as the client leaves."""
        if delay > 0 and await self.wait_closed(delay):
            raise _ClientGone

    async def write(self, data: bytes) -> None:
        """Write and flush (so each SSE event leaves at once); ``_ClientGone`` if gone."""
        if self.peer_closed():
            raise _ClientGone
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            raise _ClientGone from None

    async def read_request(self) -> _Request | None:
        """Parse one HTTP/1.x request; None if the client closed the connection first."""
        while self.buf.startswith(b"\r\n"):  # tolerate stray CRLFs between requests
            del self.buf[:2]
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise _BadRequest(431, "request headers too large")
            if not await self.fill():
                return None
            while self.buf.startswith(b"\r\n"):
                del self.buf[:2]
        method, target, version, headers = _parse_head(bytes(self.buf[:end]))
        del self.buf[: end + 4]
        if headers.get("expect", "").lower() == "100-continue":
            await self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked_body()
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise _BadRequest(400, "bad content-length") from None
            body = await self._read_exactly(length)
        if body is None:
            return None
        return _Request(method, target, version, headers, body)

    async def _read_exactly(self, n: int) -> bytes | None:
        if n < 0 or n > _MAX_BODY_BYTES:
            raise _BadRequest(413, "request body too large")
        while len(self.buf) < n:
            if not await self.fill():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def _read_line(self) -> bytes | None:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _MAX_HEADER_BYTES:
                raise _BadRequest(400, "chunk header too long")
            if not await self.fill():
                return None
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def _read_chunked_body(self) -> bytes | None:
        body = bytearray()
        while True:
            line = await self._read_line()
            if line is None:
                return None
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size") from None
            if size == 0:
                while (trailer := await self._read_line()) is not None and trailer:
                    pass  # trailers are ignored
                return bytes(body)
            chunk = await self._read_exactly(size + 2)
            if chunk is None:
                return None
            body += chunk[:-2]
            if len(body) > _MAX_BODY_BYTES:
                raise _BadRequest(413, "request body too large")

    def cancel_read(self) -> None:
        if self._read_task is not None and not self._read_task.done():
            self._read_task.cancel()


# ---------------------------------------------------------------------- server


class ScriptedLLM:
    """Scripted OpenAI-compatible server on its own event loop in a daemon thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque()
        self._default: StepSource = Reply()
        self._requests: list[RecordedRequest] = []
        self._disconnects = 0
        self._completed_streams = 0
        self._aborted_streams = 0
        self._embedding_delay = 0.0
        self._embedding_floats = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._start_error: BaseException | None = None
        # Touched on the loop thread only:
        self._conns: dict[asyncio.Task[Any], _Conn] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Bind (port 0 picks a free port), start the loop thread; return once listening."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._start_error = None
        thread = threading.Thread(target=self._run, args=(ready,), name="ScriptedLLM", daemon=True)
        thread.start()
        ready.wait()
        if self._start_error is not None:
            thread.join()
            raise self._start_error
        self._thread = thread
        return self

    def stop(self) -> None:
        """Close the listener and all connections, and join the thread. Idempotent."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None or loop is None or stop_event is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("ScriptedLLM.stop() cannot be called from its own loop")
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(stop_event.set)
        thread.join()
        self._thread = self._loop = self._stop_event = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("ScriptedLLM is not running; call start() first")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, as ``openai.AsyncOpenAI(base_url=...)`` takes it."""
        host = self._host if self._host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    # ------------------------------------------------------------- scripting

    def script(self, *steps: Step) -> None:
        """Append steps to the FIFO; each chat-completions request pops one."""
        for step in steps:
            if not isinstance(step, Reply | Fail | Hang):
                raise TypeError(f"not a step: {step!r}")
        with self._lock:
            self._steps.extend(steps)

    def set_default(self, step: StepSource) -> None:
        """Step used when the FIFO is empty; a callable gets the parsed request body."""
        with self._lock:
            self._default = step

    def set_embedding_delay(self, seconds: float) -> None:
        """Answer each embeddings request ``seconds`` late (0: at once)."""
        with self._lock:
            self._embedding_delay = seconds

    def set_embedding_floats(self, only: bool) -> None:
        """Answer embeddings as lists of numbers whatever ``encoding_format``
        asks for, as some OpenAI-compatible servers do."""
        with self._lock:
            self._embedding_floats = only

    def reset(self) -> None:
        """Clear the FIFO, recorded requests and counters; default back to ``Reply()``."""
        with self._lock:
            self._steps.clear()
            self._requests.clear()
            self._default = Reply()
            self._disconnects = self._completed_streams = self._aborted_streams = 0
            self._embedding_delay = 0.0
            self._embedding_floats = False

    @property
    def pending_steps(self) -> int:
        """Number of scripted steps not consumed yet."""
        with self._lock:
            return len(self._steps)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Chat-completions requests in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def disconnects(self) -> int:
        """Responses the client abandoned before the server finished sending them.

        Counts streams closed by the client mid-stream (or during ``first_byte_delay``),
        clients giving up on a ``Hang``, and clients giving up on a delayed non-streaming
        reply or error. Server-side aborts (``break_after``) are not counted here.
        """
        with self._lock:
            return self._disconnects

    @property
    def completed_streams(self) -> int:
        """Streams sent to the end, including ``data: [DONE]``."""
        with self._lock:
            return self._completed_streams

    @property
    def aborted_streams(self) -> int:
        """Streams the server cut on purpose (``Reply.break_after``)."""
        with self._lock:
            return self._aborted_streams

    def wait_for(self, predicate: Callable[[ScriptedLLM], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate(self)`` until true (returns True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    # ----------------------------------------------------------- loop thread

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # reported to start()
            if not ready.is_set():
                self._start_error = exc
            else:
                log.exception("ScriptedLLM loop crashed")
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(
            self._handle, self._host, self._requested_port, backlog=1024
        )
        self._port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            # Repeat in case a connection was accepted while we were closing the others.
            while self._conns:
                for task, conn in list(self._conns.items()):
                    conn.writer.transport.abort()
                    task.cancel()
                await asyncio.gather(*self._conns, return_exceptions=True)
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(reader, writer)
        self._conns[task] = conn
        try:
            while True:
                try:
                    request = await conn.read_request()
                except _BadRequest as exc:
                    await self._send_json(
                        conn,
                        exc.status,
                        _error_body(exc.status, exc.message),
                        keep_alive=False,
                    )
                    break
                if request is None or not await self._dispatch(conn, request):
                    break
        except asyncio.CancelledError:
            pass  # server stopping
        except (_ClientGone, ConnectionError, OSError):
            pass  # client went away
        except Exception:
            log.exception("ScriptedLLM: unexpected error while serving a connection")
        finally:
            conn.cancel_read()
            writer.close()
            del self._conns[task]

    async def _dispatch(self, conn: _Conn, request: _Request) -> bool:
        """Answer one request; return whether to keep the connection open."""
        log.debug("%s %s", request.method, request.target)
        path = request.path
        if path in _CHAT_PATHS:
            if request.method != "POST":
                return await self._send_error(conn, request, 405, "use POST")
            return await self._chat(conn, request)
        if path in _EMBEDDING_PATHS:
            if request.method != "POST":
                return await self._send_error(conn, request, 405, "use POST")
            return await self._embeddings(conn, request)
        if path in _MODELS_PATHS:
            if request.method != "GET":
                return await self._send_error(conn, request, 405, "use GET")
            models = {
                "object": "list",
                "data": [
                    {
                        "id": MODEL_ID,
                        "object": "model",
                        "created": 0,
                        "owned_by": "loom-tests",
                    }
                ],
            }
            return await self._send_json(conn, 200, models, request.keep_alive)
        return await self._send_error(conn, request, 404, f"no route for {request.method} {path}")

    async def _embeddings(self, conn: _Conn, request: _Request) -> bool:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            body = {}
        texts = body.get("input")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return await self._send_error(conn, request, 400, "input must be a string or strings")
        dim = body.get("dimensions") or EMBEDDING_DIM
        with self._lock:
            delay = self._embedding_delay
            floats = self._embedding_floats
        try:
            await conn.pause(delay)
        except _ClientGone:
            return False
        base64_asked = body.get("encoding_format") == "base64" and not floats
        encode = _base64 if base64_asked else _as_is
        answer = {
            "object": "list",
            "model": body.get("model", ""),
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(embedding_of(t, int(dim)))}
                for i, t in enumerate(texts)
            ],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }
        return await self._send_json(conn, 200, answer, request.keep_alive)

    def _next_step(self, body: dict[str, Any]) -> Step:
        with self._lock:
            if self._steps:
                return self._steps.popleft()
            default = self._default
        if isinstance(default, Reply | Fail | Hang):
            return default
        try:
            step = default(body)  # called without the lock, so it may use the server
        except Exception as exc:
            log.exception("ScriptedLLM: default step callable raised")
            return Fail(500, f"scripted default raised {exc!r}")
        if not isinstance(step, Reply | Fail | Hang):
            return Fail(500, f"scripted default returned a non-step: {step!r}")
        return step

    async def _chat(self, conn: _Conn, request: _Request) -> bool:
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            body = None
        recorded = RecordedRequest(
            request.method,
            request.target,
            dict(request.headers),
            body,
            time.monotonic(),
        )
        with self._lock:
            self._requests.append(recorded)
        if body is None:
            return await self._send_error(conn, request, 400, "request body is not a JSON object")

        step = self._next_step(body)
        try:
            if isinstance(step, Hang):
                await conn.wait_closed(None)  # returns only when the client leaves
                raise _ClientGone
            await conn.pause(step.first_byte_delay)
            if isinstance(step, Fail):
                headers = []
                if step.retry_after_ms is not None:
                    headers.append(("retry-after-ms", str(step.retry_after_ms)))
                return await self._send_error(conn, request, step.status, step.message, headers)
            if body.get("stream"):
                return await self._stream(conn, request, body, step)
            return await self._complete(conn, request, body, step)
        except _ClientGone:
            with self._lock:
                self._disconnects += 1
            return False

    # ------------------------------------------------------------ responses

    def _head(self, status: int, headers: list[tuple[str, str]], keep_alive: bool) -> bytes:
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{name}: {value}" for name, value in headers]
        lines.append(f"x-request-id: req_{next(self._ids)}")
        lines.append("connection: keep-alive" if keep_alive else "connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(
        self,
        conn: _Conn,
        status: int,
        obj: Any,
        keep_alive: bool,
        headers: list[tuple[str, str]] | None = None,
    ) -> bool:
        payload = _dumps(obj)
        all_headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            *(headers or []),
        ]
        await conn.write(self._head(status, all_headers, keep_alive) + payload)
        return keep_alive

    async def _send_error(
        self,
        conn: _Conn,
        request: _Request,
        status: int,
        message: str,
        headers: list[tuple[str, str]] | None = None,
    ) -> bool:
        return await self._send_json(
            conn, status, _error_body(status, message), request.keep_alive, headers
        )

    def _reply_content(self, body: dict[str, Any], reply: Reply) -> tuple[list[str], str | None]:
        """The content chunks and the full content (None for a pure tool-call reply)."""
        if reply.chunks is not None:
            return list(reply.chunks), "".join(reply.chunks)
        if reply.text is None and reply.tool_calls:
            return [], None
        text = _echo_text(body) if reply.text is None else reply.text
        return _WORD_CHUNKS.findall(text), text

    @staticmethod
    def _usage(
        body: dict[str, Any], reply: Reply, content: str | None, calls: list[_ToolCall]
    ) -> dict[str, int]:
        if reply.usage is not None:
            prompt, completion = reply.usage
        else:
            prompt = _prompt_words(body)
            completion = len((content or "").split()) + sum(
                len(call.arguments.split()) for call in calls
            )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    @staticmethod
    def _finish_reason(reply: Reply, calls: list[_ToolCall]) -> str:
        if calls and reply.finish_reason == "stop":
            return "tool_calls"
        return reply.finish_reason

    async def _complete(
        self, conn: _Conn, request: _Request, body: dict[str, Any], reply: Reply
    ) -> bool:
        _, content = self._reply_content(body, reply)
        calls = _tool_calls(reply)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in calls
            ]
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._finish_reason(reply, calls),
                }
            ],
            "usage": self._usage(body, reply, content, calls),
        }
        return await self._send_json(conn, 200, completion, request.keep_alive)

    async def _stream(
        self, conn: _Conn, request: _Request, body: dict[str, Any], reply: Reply
    ) -> bool:
        chunked = request.version != "HTTP/1.0"  # HTTP/1.0: body delimited by closing
        keep_alive = chunked and request.keep_alive
        chunks, content = self._reply_content(body, reply)
        calls = _tool_calls(reply)
        stream_options = body.get("stream_options")
        include_usage = isinstance(stream_options, dict) and bool(
            stream_options.get("include_usage")
        )
        base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
        }
        if include_usage:
            base["usage"] = None

        def frame(data: bytes) -> bytes:
            event = b"data: " + data + b"\n\n"
            return b"%x\r\n%s\r\n" % (len(event), event) if chunked else event

        def event(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": finish_reason,
            }
            return frame(_dumps({**base, "choices": [choice]}))

        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        if chunked:
            headers.append(("transfer-encoding", "chunked"))
        await conn.write(self._head(200, headers, keep_alive))
        await conn.write(event({"role": "assistant"}))

        # chunk_delay is slept *between* content / tool-call events, not before the first.
        events_sent = 0

        async def send_paced(data: bytes) -> None:
            nonlocal events_sent
            if events_sent:
                await conn.pause(reply.chunk_delay)
            await conn.write(data)
            events_sent += 1

        if reply.break_after is not None:
            for piece in chunks[: reply.break_after]:
                await send_paced(event({"content": piece}))
            if events_sent:
                await conn.pause(reply.chunk_delay)
            with self._lock:  # counted first, so it is visible once the client notices
                self._aborted_streams += 1
            conn.writer.transport.abort()  # no final chunk, no [DONE], no chunked end
            return False

        for piece in chunks:
            await send_paced(event({"content": piece}))
        for index, call in enumerate(calls):
            opening = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            await send_paced(event({"tool_calls": [opening]}))
            for piece in _split_arguments(call.arguments):
                fragment = {"index": index, "function": {"arguments": piece}}
                await send_paced(event({"tool_calls": [fragment]}))

        tail = event({}, self._finish_reason(reply, calls))
        if include_usage:
            usage = self._usage(body, reply, content, calls)
            tail += frame(_dumps({**base, "choices": [], "usage": usage}))
        tail += frame(b"[DONE]")
        if chunked:
            tail += b"0\r\n\r\n"
        # Counted before the write, so the count is already up to date when the client
        # sees [DONE]; taken back if the client turns out to be gone.
        with self._lock:
            self._completed_streams += 1
        try:
            await conn.write(tail)
        except _ClientGone:
            with self._lock:
                self._completed_streams -= 1
            raise
        return keep_alive


# ------------------------------------------------------------------ standalone


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.scripted_llm",
        description="Serve scripted OpenAI-compatible chat completions (default replies).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks a free port")
    parser.add_argument("--text", default=None, help="fixed reply text (default: echo)")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument(
        "--first-byte-delay", type=float, default=0.0, help="seconds before the headers"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each request")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
        log.setLevel(logging.DEBUG)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    with ScriptedLLM(args.host, args.port) as server:
        server.set_default(
            Reply(
                text=args.text,
                chunk_delay=args.chunk_delay,
                first_byte_delay=args.first_byte_delay,
            )
        )
        print(f"ScriptedLLM serving at {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while not stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("ScriptedLLM stopped", flush=True)


if __name__ == "__main__":
    main()
