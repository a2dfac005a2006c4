"""Streaming chat over any OpenAI-compatible endpoint, with bounded retries.

Retries (429, 5xx, timeouts, dropped connections) happen only before the
first piece of text reaches the caller: after that a retry would repeat text
the caller already has, so a failure ends the reply instead.

Every call (with its retries) is one span and a few metrics following the
OpenTelemetry GenAI conventions (``service.telemetry.genai``); prompt and
completion text are recorded only when ``capture_content`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from service.core.errors import FailedPrecondition, LoomError, ResourceExhausted, Unavailable
from service.core.models import ToolCall, ToolSpec, Usage
from service.core.ports import ChatChunk, ChatTurn
from service.core.usage import record
from service.llm.formats import AnswerFormats, refuses_format
from service.telemetry.genai import GenAITelemetry, ModelCall

__all__ = ["OpenAIChatModel"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class _Attempt:
    """One try of a model call."""

    number: int  # 0 for the first try
    committed: bool = False  # the caller has what a retry would send again


class OpenAIChatModel:
    """``ChatModel`` over ``openai.AsyncOpenAI``.

    The SDK's own retries are off (``max_retries=0``): this class retries, so
    that failures after the response headers (a stream that breaks before
    its first token) are retried the same way as failed requests.
    """

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        retry_base_delay: float,
        retry_max_delay: float = 10.0,
        capture_content: bool = False,
    ) -> None:
        self._telemetry = GenAITelemetry(base_url, capture_content=capture_content)
        self._formats = AnswerFormats()
        self._configured = bool(base_url or api_key)
        self._max_retries = max_retries
        self._base_delay = retry_base_delay
        self._max_delay = retry_max_delay
        self._timeout = timeout
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            # Local endpoints (Ollama, vLLM) need no key, but the SDK wants one.
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=httpx2.Timeout(timeout, connect=min(timeout, 10.0)),
        )

    @property
    def configured(self) -> bool:
        """False when neither a base URL nor an API key was given."""
        return self._configured

    async def close(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()

    async def stream(
        self,
        model: str,
        turns: Sequence[ChatTurn],
        tools: Sequence[ToolSpec] = (),
        tool_choice: str = "",
    ) -> AsyncGenerator[ChatChunk, None]:
        """Stream one reply; see ``ChatModel.stream``. Tool calls arrive in
        pieces and are sent on as one final chunk, complete."""
        body: dict[str, Any] = {
            "model": model,
            "messages": [_message(t) for t in turns],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = [_tool(t) for t in tools]
            if tool_choice:
                body["tool_choice"] = _tool_choice(tool_choice)
        call = self._telemetry.start("chat", model, body["messages"], stream=True)
        try:
            once = functools.partial(self._stream_once, call, body)
            async with contextlib.aclosing(self._retrying(call, model, once)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except BaseException as exc:
            call.fail(_error_type(exc), _error_message(exc))
            raise
        finally:
            call.end()

    async def _retrying(
        self, call: ModelCall, model: str, once: Callable[[_Attempt], AsyncGenerator[T, None]]
    ) -> AsyncGenerator[T, None]:
        """What ``once`` yields, with ``once`` tried again after a retryable
        failure (with back-off) until it succeeds, the retries run out, or
        the attempt has committed (sent the caller what a retry would repeat).

        Raises:
            LoomError: the last failure, translated.
        """
        for number in itertools.count():
            attempt = _Attempt(number)
            try:
                async with contextlib.aclosing(once(attempt)) as items:
                    async for item in items:
                        yield item
                return
            except (openai.APIError, httpx2.HTTPError) as exc:
                error = self._translate(exc, model, attempt.committed, number)
                if attempt.committed or not _retryable(exc) or number >= self._max_retries:
                    call.fail(type(exc).__qualname__, error.message)
                    raise error from None
                delay = self._delay(exc, number)
                call.retry(type(exc).__qualname__, delay)
                log.info(
                    "model call failed (%s); retry %d of %d in %.2fs",
                    error.reason,
                    number + 1,
                    self._max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _stream_once(
        self, call: ModelCall, body: dict[str, Any], attempt: _Attempt
    ) -> AsyncGenerator[ChatChunk, None]:
        """One streamed request; the attempt commits with its first text or
        tool-call piece."""
        calls: dict[int, dict[str, str]] = {}
        # The SDK's generic POST: chat.completions.create() first walks the
        # whole prompt through its TypedDict transformer, which costs ~1 ms
        # per message of history on every call.
        with call.current():
            response = await self._client.post(
                "/chat/completions",
                cast_to=ChatCompletionChunk,
                body=body,
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
        async with response:
            async for chunk in response:
                usage = (
                    Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                    if chunk.usage
                    else None
                )
                choice = chunk.choices[0] if chunk.choices else None
                text = (choice.delta.content or "") if choice else ""
                finish = choice.finish_reason if choice else None
                if choice and choice.delta.tool_calls:
                    attempt.committed = True  # a retry could not undo a half-sent call
                    _gather(calls, choice.delta.tool_calls)
                call.chunk(
                    text=text,
                    first=bool(text) or attempt.committed,
                    model=chunk.model,
                    response_id=chunk.id,
                    finish_reason=finish,
                    usage=(usage.input_tokens, usage.output_tokens) if usage else None,
                )
                if text or usage or finish:
                    attempt.committed = attempt.committed or bool(text)
                    yield ChatChunk(text=text, usage=usage, finish_reason=finish, model=chunk.model)
        if calls:
            call.tool_calls([(c["id"], c["name"], c["arguments"]) for c in calls.values()])
            yield ChatChunk(
                tool_calls=tuple(
                    ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
                    for i, c in sorted(calls.items())
                )
            )

    async def complete(
        self,
        model: str,
        turns: Sequence[ChatTurn],
        *,
        json: bool = False,
        schema: Mapping[str, Any] | None = None,
    ) -> str:
        """One reply, not streamed; see ``ChatModel.complete``. The answer
        format is the best the model takes (``formats.py``): a refusal of
        one is remembered and the call made again with the next."""
        messages = [_message(t) for t in turns]
        candidates = self._formats.candidates(model, json=json, schema=schema)
        for n, answer in enumerate(candidates, 1):
            body: dict[str, Any] = {"model": model, "messages": messages}
            if answer.response_format is not None:
                body["response_format"] = answer.response_format
            try:
                return await self._complete(model, body)
            except FailedPrecondition as exc:
                if n == len(candidates) or not refuses_format(exc):
                    raise
                self._formats.refused(model, answer.name)
                log.info("model %r refused response_format %s; trying the next", model, answer.name)
        raise AssertionError("the last candidate format always returns or raises")

    async def _complete(self, model: str, body: dict[str, Any]) -> str:
        call = self._telemetry.start("chat", model, body["messages"], stream=False)
        try:
            once = functools.partial(self._complete_once, call, body)
            [text] = [t async for t in self._retrying(call, model, once)]
            return text
        except BaseException as exc:
            call.fail(_error_type(exc), _error_message(exc))
            raise
        finally:
            call.end()

    async def _complete_once(
        self, call: ModelCall, body: dict[str, Any], attempt: _Attempt
    ) -> AsyncGenerator[str, None]:
        """One request for a whole reply; yields its text."""
        with call.current():
            response = await self._client.post(
                "/chat/completions", cast_to=ChatCompletion, body=body
            )
        choice = response.choices[0] if response.choices else None
        text = (choice.message.content or "") if choice else ""
        usage = response.usage
        if usage:  # charged to the thread a summary or extraction job works for
            record(Usage(usage.prompt_tokens, usage.completion_tokens))
        call.chunk(
            text=text,
            model=response.model,
            response_id=response.id,
            finish_reason=choice.finish_reason if choice else None,
            usage=(usage.prompt_tokens, usage.completion_tokens) if usage else None,
        )
        yield text

    def _delay(self, exc: Exception, attempt: int) -> float:
        if isinstance(exc, openai.APIStatusError):
            headers = exc.response.headers
            try:
                if "retry-after-ms" in headers:
                    return min(float(headers["retry-after-ms"]) / 1000, self._max_delay)
                if "retry-after" in headers:
                    return min(float(headers["retry-after"]), self._max_delay)
            except ValueError:
                pass
        backoff = self._base_delay * (2**attempt)
        return float(min(backoff * random.uniform(0.5, 1.0), self._max_delay))  # noqa: S311

    def _translate(self, exc: Exception, model: str, mid_stream: bool, attempt: int) -> LoomError:
        tries = f"after {attempt + 1} attempt{'s' if attempt else ''}"
        if isinstance(exc, openai.RateLimitError):
            return ResourceExhausted(
                f"the model endpoint is rate-limiting requests (HTTP 429) {tries}; retry later"
            )
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return FailedPrecondition(
                f"the model endpoint refused Loom's credentials (HTTP {exc.status_code}); "
                "check LOOM_LLM_API_KEY",
                reason="MODEL_AUTH_FAILED",
            )
        if isinstance(exc, openai.NotFoundError):
            return FailedPrecondition(
                f"the model endpoint does not serve model {model!r} (HTTP 404); set another "
                "model on the assistant or the message",
                reason="MODEL_NOT_FOUND",
            )
        if isinstance(exc, openai.APIStatusError) and exc.status_code < 500:
            detail = str(exc.message)[:300]
            return FailedPrecondition(
                f"the model endpoint rejected the request (HTTP {exc.status_code}): {detail}",
                reason="MODEL_REJECTED_REQUEST",
            )
        if isinstance(exc, openai.APIStatusError):
            return Unavailable(
                f"the model endpoint failed (HTTP {exc.status_code}) {tries}; retry later",
                reason="MODEL_UNAVAILABLE",
            )
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return Unavailable(
                f"the model endpoint did not answer within {self._timeout:g}s {tries}; retry later",
                reason="MODEL_TIMEOUT",
            )
        if mid_stream:
            return Unavailable(
                "the model endpoint broke off the reply mid-stream; the part received is "
                "stored as a FAILED message",
                reason="MODEL_STREAM_BROKEN",
            )
        return Unavailable(
            f"could not reach the model endpoint {tries}; retry later",
            reason="MODEL_UNREACHABLE",
        )


def _gather(calls: dict[int, dict[str, str]], pieces: Sequence[Any]) -> None:
    """Add streamed pieces of tool calls to ``calls`` (by index)."""
    for piece in pieces:
        call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
        if piece.id:
            call["id"] = piece.id
        if piece.function and piece.function.name:
            call["name"] += piece.function.name
        if piece.function and piece.function.arguments:
            call["arguments"] += piece.function.arguments


def _message(turn: ChatTurn) -> dict[str, Any]:
    """A prompt turn in the Chat Completions format."""
    message: dict[str, Any] = {"role": turn.role, "content": turn.content}
    if turn.tool_calls:
        message["content"] = turn.content or None
        message["tool_calls"] = [
            {
                "id": c.tool_call_id,
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in turn.tool_calls
        ]
    if turn.tool_call_id:
        message["tool_call_id"] = turn.tool_call_id
    return message


def _tool(spec: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {"name": spec.name}
    if spec.description:
        function["description"] = spec.description
    function["parameters"] = spec.parameters or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _tool_choice(choice: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _error_type(exc: BaseException) -> str:
    """``error.type`` of a failure that did not come from the endpoint."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled"
    return type(exc).__qualname__


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, LoomError):
        return exc.message
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "the caller stopped the reply"
    return type(exc).__name__


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500 or exc.status_code == 408
    return isinstance(exc, openai.APIConnectionError | httpx2.TransportError)
