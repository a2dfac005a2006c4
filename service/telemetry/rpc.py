"""The RPC layer: OpenTelemetry's gRPC server interceptor (one SERVER span
per call, the caller's ``traceparent`` as its parent), and Loom's own
interceptor for what that one does not do on grpc.aio: the call duration
metric by method and status code, the active streams gauge, and one log line
per call. A call that fails with an ErrorInfo reason (``record_reason``,
which Loom's error interceptor calls) has it in its log line and as the
metric's ``error.type``: a stream a shutdown cut (``SERVER_SHUTTING_DOWN``)
is counted as such, not as a client's cancellation.

Interceptor order (``server_interceptors``): the OpenTelemetry interceptor
first, so its span is current for everything below it and records the final
status code (Loom's error interceptor aborts through the servicer context the
OpenTelemetry interceptor wrapped); then ``RpcTelemetry``, whose log line and
measurements see the same code inside the span (the log line carries its
trace id); then Loom's own interceptor. Health checks and reflection are
neither traced, measured nor logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio
from opentelemetry import metrics
from opentelemetry.trace import TracerProvider

__all__ = ["EXCLUDED_PREFIXES", "RpcTelemetry", "record_reason", "server_interceptors"]

log = logging.getLogger("loom.rpc")

EXCLUDED_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
# Seconds; the semantic conventions' advice plus long streamed replies.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

# Each call runs in its own task, so this is the call's own.
_reason: ContextVar[str] = ContextVar("loom_rpc_error_reason", default="")


def record_reason(reason: str) -> None:
    """Note the ErrorInfo reason the current call fails with."""
    _reason.set(reason)


if TYPE_CHECKING:  # grpc's handler types are generic only in their stubs
    Continuation = Callable[
        [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
    ]


def _traced(details: grpc.HandlerCallDetails) -> bool:
    method: str = details.method or ""
    return not method.startswith(EXCLUDED_PREFIXES)


def server_interceptors(
    tracer_provider: TracerProvider | None, tenant: Callable[[], str | None]
) -> list[aio.ServerInterceptor]:
    """The telemetry interceptors, in order, to go before Loom's own: the
    OpenTelemetry span interceptor when tracing is on, then ``RpcTelemetry``."""
    chain: list[aio.ServerInterceptor] = []
    if tracer_provider is not None:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        chain.append(
            aio_server_interceptor(  # type: ignore[no-untyped-call]
                tracer_provider=tracer_provider, filter_=_traced
            )
        )
    chain.append(RpcTelemetry(tenant))
    return chain


def _final_code(context: aio.ServicerContext[Any, Any], exc: BaseException | None) -> str:
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        return "DEADLINE_EXCEEDED" if expired else "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if exc is not None and not isinstance(exc, aio.AbortError) else "OK"


class RpcTelemetry(aio.ServerInterceptor):
    """Duration (``rpc.server.call.duration``), active streams
    (``loom.rpc.active_streams``) and one INFO log line per call; ``tenant``
    names the caller's tenant once Loom's interceptor has authenticated it."""

    def __init__(self, tenant: Callable[[], str | None]) -> None:
        self._tenant = tenant
        meter = metrics.get_meter("loom")
        self._duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of incoming RPCs (streams: until the last message).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._streams = meter.create_up_down_counter(
            "loom.rpc.active_streams",
            unit="{stream}",
            description="Server-streaming calls in progress (SendMessage replies).",
        )

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method or ""
        if handler is None or not _traced(handler_call_details):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # Loom has no client-streaming RPCs

    def _finish(
        self,
        method: str,
        context: aio.ServicerContext[Any, Any],
        started: float,
        exc: BaseException | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        code = _final_code(context, exc)
        reason = _reason.get() if code != "OK" else ""
        attributes = {
            "rpc.system.name": "grpc",
            "rpc.method": method.lstrip("/"),
            "rpc.response.status_code": code,
        }
        if reason:
            attributes["error.type"] = reason
        self._duration.record(elapsed, attributes)
        log.info(
            "%s %s%s %.1fms",
            method,
            code,
            f" {reason}" if reason else "",
            elapsed * 1000,
            extra={
                "rpc.method": method,
                "rpc.code": code,
                "error.reason": reason,
                "duration_ms": round(elapsed * 1000, 2),
                "tenant": self._tenant() or "",
            },
        )

    def _unary(self, method: str, behavior: Any) -> Any:
        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            failure: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._finish(method, context, started, failure)

        return unary

    def _stream(self, method: str, behavior: Any) -> Any:
        streams = self._streams
        attributes = {"rpc.method": method.lstrip("/")}

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            failure: BaseException | None = None
            streams.add(1, attributes)
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except BaseException as exc:
                failure = exc
                raise
            finally:
                streams.add(-1, attributes)
                self._finish(method, context, started, failure)

        return stream
