"""Model calls in traces and metrics, after the OpenTelemetry GenAI semantic
conventions (https://opentelemetry.io/docs/specs/semconv/gen-ai/).

Each call to the model (all of its retries) is one CLIENT span
``{operation} {model}``, e.g. ``chat gpt-4o-mini``, with
``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.response.id``,
``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``server.address``/``server.port``, the
sampling settings the request sets (``gen_ai.request.temperature``,
``.top_p``, ``.max_tokens``, ``.stop_sequences``, ``.seed``),
``gen_ai.output.type`` for a response format, and ``error.type`` on
failure. Time to the first token of a streamed reply is
the attribute ``gen_ai.response.time_to_first_chunk`` (seconds) and the event
``gen_ai.first_chunk``; each failed attempt that is retried is a ``retry``
event (``error.type``, attempt, back-off) and ``loom.llm.attempts`` counts
the attempts.

Metrics: ``gen_ai.client.operation.duration``, ``gen_ai.client.token.usage``
(``gen_ai.token.type`` ``input``/``output``, by request and response model)
and ``gen_ai.client.operation.time_to_first_chunk``.

Prompt and completion text are recorded (``gen_ai.system_instructions``,
``gen_ai.input.messages``, ``gen_ai.output.messages``) only with
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``. API keys and
request headers never are.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from service.telemetry.spans import ERROR_TYPE, tracer

__all__ = ["GenAITelemetry", "ModelCall", "provider_name"]

_tracer = tracer("loom.llm")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Hosts of well-known providers (their gen_ai.provider.name values); any
# other OpenAI-compatible endpoint is reported as "openai", the API spoken,
# as the OpenTelemetry openai instrumentation does.
_PROVIDERS = {
    "api.openai.com": "openai",
    "api.groq.com": "groq",
    "api.deepseek.com": "deepseek",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "api.anthropic.com": "anthropic",
}
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_SECONDS_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
)  # fmt: skip


def provider_name(host: str, port: int | None) -> str:
    """``gen_ai.provider.name`` for an endpoint."""
    if host in _PROVIDERS:
        return _PROVIDERS[host]
    if host.endswith(".openai.azure.com"):
        return "azure.ai.openai"
    if port == 11434:
        return "ollama"
    return "openai"


class GenAITelemetry:
    """Spans and metrics for the calls of one model client."""

    def __init__(self, base_url: str | None, *, capture_content: bool = False) -> None:
        url = urlsplit(base_url or DEFAULT_BASE_URL)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        self.capture_content = capture_content
        self.provider = provider_name(host, url.port)
        self._server: dict[str, AttributeValue] = {"server.address": host, "server.port": port}
        meter = metrics.get_meter("loom")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
        )
        self.first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from the request to the first chunk of a streamed reply.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )

    def start(
        self,
        operation: str,
        model: str,
        messages: Sequence[dict[str, Any]],
        *,
        stream: bool,
        parameters: Mapping[str, Any] | None = None,
    ) -> ModelCall:
        """Start the span of one call (not made current: a streamed reply
        is consumed between yields of the caller's generator); ``parameters``
        is the request body, whose sampling settings become attributes."""
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": model,
            "gen_ai.request.stream": stream,
            **self._server,
        }
        name = f"{operation} {model}"
        span = _tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        span.set_attributes(_request_attributes(parameters or {}))
        call = ModelCall(self, span, attributes)
        if self.capture_content and span.is_recording():
            system, inputs = _input_messages(messages)
            if system:
                span.set_attribute("gen_ai.system_instructions", json.dumps(system))
            span.set_attribute("gen_ai.input.messages", json.dumps(inputs))
        return call


class ModelCall:
    """One model call in progress: collects what the response says, then
    ends the span and records the metrics (``end``)."""

    def __init__(
        self, owner: GenAITelemetry, span: trace.Span, attributes: dict[str, AttributeValue]
    ) -> None:
        self._owner = owner
        self.span = span
        self._metric_attributes = {
            k: v for k, v in attributes.items() if k != "gen_ai.request.stream"
        }
        self._started = time.perf_counter()
        self._first: float | None = None
        self._attempts = 1
        self._finish: list[str] = []
        self._usage: tuple[int, int] | None = None
        self._response_model = ""
        self._error = ""
        self._text: list[str] = []
        self._tool_calls: list[dict[str, str]] = []
        self._ended = False

    @contextmanager
    def current(self) -> Iterator[None]:
        """Make the call's span current (around the HTTP request)."""
        # Failures are recorded by ``fail`` (with Loom's message, never the
        # provider's response body, which may quote the prompt).
        with trace.use_span(
            self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield

    def chunk(
        self,
        *,
        text: str = "",
        first: bool = False,
        model: str | None = None,
        response_id: str | None = None,
        finish_reason: str | None = None,
        usage: tuple[int, int] | None = None,
    ) -> None:
        """Note one chunk (or the whole response); ``first`` marks content."""
        if first and self._first is None:
            self._first = time.perf_counter() - self._started
            if self.span.is_recording():
                self.span.set_attribute("gen_ai.response.time_to_first_chunk", self._first)
                self.span.add_event("gen_ai.first_chunk")
        if model and not self._response_model:  # the first chunk names both
            self._response_model = model
            self.span.set_attribute("gen_ai.response.model", model)
            if response_id:
                self.span.set_attribute("gen_ai.response.id", response_id)
        if finish_reason:
            self._finish.append(finish_reason)
        if usage is not None:
            self._usage = usage
        if text and self._owner.capture_content:
            self._text.append(text)

    def tool_calls(self, calls: Sequence[tuple[str, str, str]]) -> None:
        """Note the tool calls of the reply ((id, name, arguments) each)."""
        if self._owner.capture_content:
            self._tool_calls.extend(
                {"type": "tool_call", "id": i, "name": n, "arguments": a} for i, n, a in calls
            )

    def retry(self, error_type: str, delay: float) -> None:
        """A failed attempt is about to be retried after ``delay`` seconds."""
        self.span.add_event(
            "retry",
            {
                ERROR_TYPE: error_type,
                "loom.retry.attempt": self._attempts,
                "loom.retry.delay_s": delay,
            },
        )
        self._attempts += 1

    def fail(self, error_type: str, message: str) -> None:
        """The call failed for good (``message`` is Loom's, never the
        provider's body)."""
        if not self._error:
            self._error = error_type
            self.span.set_attribute(ERROR_TYPE, error_type)
            self.span.set_status(Status(StatusCode.ERROR, message[:500]))

    def end(self) -> None:
        """End the span and record the metrics (idempotent)."""
        if self._ended:
            return
        self._ended = True
        elapsed = time.perf_counter() - self._started
        span = self.span
        attributes = dict(self._metric_attributes)
        if self._response_model:
            attributes["gen_ai.response.model"] = self._response_model
        if span.is_recording():
            span.set_attribute("loom.llm.attempts", self._attempts)
            if self._finish:
                span.set_attribute("gen_ai.response.finish_reasons", self._finish)
            if self._usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", self._usage[0])
                span.set_attribute("gen_ai.usage.output_tokens", self._usage[1])
            if self._owner.capture_content and not self._error:
                parts: list[dict[str, str]] = []
                if self._text:
                    parts.append({"type": "text", "content": "".join(self._text)})
                parts.extend(self._tool_calls)
                output = {
                    "role": "assistant",
                    "parts": parts,
                    "finish_reason": self._finish[-1] if self._finish else "",
                }
                span.set_attribute("gen_ai.output.messages", json.dumps([output]))
        owner = self._owner
        if self._usage is not None:
            owner.tokens.record(self._usage[0], {**attributes, "gen_ai.token.type": "input"})
            owner.tokens.record(self._usage[1], {**attributes, "gen_ai.token.type": "output"})
        if self._first is not None:
            owner.first_chunk.record(self._first, attributes)
        if self._error:
            attributes[ERROR_TYPE] = self._error
        owner.duration.record(elapsed, attributes)
        span.end()


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.get("content"):
        kind = "tool_call_response" if message.get("role") == "tool" else "text"
        key = "response" if kind == "tool_call_response" else "content"
        part: dict[str, Any] = {"type": kind, key: message["content"]}
        if kind == "tool_call_response":
            part["id"] = message.get("tool_call_id", "")
        parts.append(part)
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id", ""),
                "name": function.get("name", ""),
                "arguments": function.get("arguments", ""),
            }
        )
    return parts


def _input_messages(
    messages: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    inputs: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "system":
            system.extend(_parts(message))
        else:
            inputs.append({"role": message.get("role", ""), "parts": _parts(message)})
    return system, inputs


# Chat Completions request parameters and the attributes that carry them.
_REQUEST_ATTRIBUTES = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_tokens": "gen_ai.request.max_tokens",
    "stop": "gen_ai.request.stop_sequences",
    "seed": "gen_ai.request.seed",
}


def _request_attributes(parameters: Mapping[str, Any]) -> dict[str, AttributeValue]:
    """The sampling settings a request sets, and the kind of output it asks
    for (``gen_ai.output.type``: json for a JSON response format)."""
    attributes: dict[str, AttributeValue] = {
        name: parameters[key] for key, name in _REQUEST_ATTRIBUTES.items() if key in parameters
    }
    fmt = parameters.get("response_format")
    if isinstance(fmt, Mapping):
        attributes["gen_ai.output.type"] = "text" if fmt.get("type") == "text" else "json"
    return attributes
