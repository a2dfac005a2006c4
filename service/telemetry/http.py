"""The HTTP door's telemetry, as ``rpc.py`` is the gRPC calls': one SERVER
span per request (a caller's W3C ``traceparent`` as its parent, named
after the route), the ``http.server.request.duration`` histogram by
method, route and status, and one INFO log line per request.

An ASGI middleware of Loom's own rather than OpenTelemetry's ASGI
instrumentation, which records a span per message sent: one per event of a
streamed response.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from service.telemetry.rpc import DURATION_BUCKETS
from service.telemetry.spans import ERROR_TYPE, record_error

__all__ = ["HttpTelemetry"]

log = logging.getLogger("loom.http")

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Any]


class HttpTelemetry:
    """Wraps an ASGI app; ``tenant`` reads the caller's tenant from a
    request's scope once the app has authenticated it."""

    def __init__(
        self,
        app: App,
        tracer_provider: TracerProvider | None,
        tenant: Callable[[Scope], str | None],
    ) -> None:
        self._app = app
        self._tenant = tenant
        self._tracer = trace.get_tracer("loom.http", tracer_provider=tracer_provider)
        self._tracing = tracer_provider is not None
        self._duration = metrics.get_meter("loom").create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP requests (streams: until the last event).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    @contextmanager
    def _span(self, scope: Scope) -> Iterator[Span | None]:
        if not self._tracing:
            yield None
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        with self._tracer.start_as_current_span(
            scope["method"],
            context=propagate.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": scope["method"],
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless the app starts a response

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with self._span(scope) as span:
            failure: BaseException | None = None
            try:
                await self._app(scope, receive, sending)
            except BaseException as exc:
                failure = exc
                raise
            finally:
                self._finish(scope, span, status, failure, started)

    def _finish(
        self,
        scope: Scope,
        span: Span | None,
        status: int,
        failure: BaseException | None,
        started: float,
    ) -> None:
        elapsed = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "") or "(no route)"
        method = scope["method"]
        if span is not None:
            span.update_name(f"{method} {route}")
            span.set_attributes({"http.route": route, "http.response.status_code": status})
            if failure is not None:
                record_error(span, failure)
            elif status >= 500:
                span.set_attribute(ERROR_TYPE, str(status))
                span.set_status(Status(StatusCode.ERROR))
        attributes = {"http.request.method": method, "http.route": route}
        self._duration.record(elapsed, {**attributes, "http.response.status_code": status})
        log.info(
            "%s %s %d %.1fms",
            method,
            route,
            status,
            elapsed * 1000,
            extra={
                "http.method": method,
                "http.route": route,
                "http.status_code": status,
                "duration_ms": round(elapsed * 1000, 2),
                "tenant": self._tenant(scope) or "",
            },
        )
