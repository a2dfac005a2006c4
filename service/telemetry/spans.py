"""Loom's own spans: the tracer, and small helpers the domain code calls.

Domain modules get their tracer from ``tracer()`` (the global provider that
``setup()`` installs; a no-op until then), so no constructor changes are
needed to trace them, and ``annotate`` lets any code add a fact to the span
it runs in without knowing which one that is. Telemetry knows no domain: an
error says its message may be recorded by being ``Explained``.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

__all__ = [
    "ERROR_TYPE",
    "Explained",
    "annotate",
    "record_error",
    "safe_message",
    "span",
    "tracer",
]

ERROR_TYPE = "error.type"
_PREFIX = "loom."


def tracer(name: str = "loom") -> trace.Tracer:
    """A tracer of the global provider (no-op while telemetry is off)."""
    return trace.get_tracer(name)


def annotate(
    attributes: Mapping[str, AttributeValue] | None = None, /, **named: AttributeValue
) -> None:
    """Set attributes on the current span (the RPC's span in a handler); a
    no-op when tracing is off. Keyword names get the ``loom.`` prefix;
    ``attributes`` are set under their full names::

        annotate(prompt_dropped_messages=3, prompt_summary_ready=False)
        # loom.prompt_dropped_messages=3, loom.prompt_summary_ready=False

    Never pass message content: attributes are exported as they are.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    if attributes:
        span.set_attributes(attributes)
    if named:
        span.set_attributes({_PREFIX + key: value for key, value in named.items()})


@runtime_checkable
class Explained(Protocol):
    """An exception whose message was written for people to read and holds
    no data (Loom's domain errors, ``service.core.errors``)."""

    @property
    def explanation(self) -> str:
        """The message, safe to record on a span."""


def safe_message(exc: BaseException) -> str:
    """What a span may say about ``exc``: an ``Explained`` error's
    explanation, else only the exception's class, since a library's message
    may quote the data it failed on (a prompt, a document)."""
    if isinstance(exc, Explained):
        return exc.explanation[:500]
    return type(exc).__name__


def record_error(span: Span, exc: BaseException, error_type: str | None = None) -> None:
    """Mark ``span`` failed: ``error.type`` (the exception's class unless
    given), an ERROR status and an exception event, all with
    ``safe_message`` (the stack trace keeps its frames: code, not data)."""
    if not span.is_recording():
        return
    message = safe_message(exc)
    span.set_attribute(ERROR_TYPE, error_type or type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, message))
    # The SDK's stack trace ends with the raw message: the frames only, then ours.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    stacktrace = f"Traceback (most recent call last):\n{frames}{type(exc).__qualname__}: {message}"
    span.record_exception(
        exc, attributes={"exception.message": message, "exception.stacktrace": stacktrace}
    )


@contextmanager
def span(
    tracer_: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, AttributeValue] | None = None,
    links: Sequence[Link] | None = None,
) -> Iterator[Span]:
    """A current span around the block; a failure is recorded with
    ``record_error`` (never the raw exception message, which the SDK's own
    ``start_as_current_span`` would record)."""
    with tracer_.start_as_current_span(
        name,
        kind=kind,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            record_error(current, exc)
            raise
