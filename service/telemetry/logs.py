"""Structured logs: one JSON object per line on stderr, carrying the trace
and span ids of the span the line was written in, so a log line leads to its
trace and back.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
``trace_id``/``span_id`` inside a sampled span, ``exception`` with the
traceback when there is one, and any ``extra={...}`` fields (the per-RPC line
adds ``rpc.method``, ``rpc.code``, ``duration_ms`` and ``tenant``).

Message content is never logged by Loom. Libraries that log request bodies
at DEBUG (the openai SDK, PyMongo's command log, Chroma) are held at INFO or
WARNING unless ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

__all__ = ["JsonFormatter", "configure_logging"]

# Attributes every LogRecord has; anything else came in through ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
# Loggers that print request or command bodies (message content) at DEBUG.
_CONTENT_LOGGERS = {"openai": logging.INFO, "chromadb": logging.INFO, "pymongo": logging.WARNING}
_QUIET_LOGGERS = {"pymongo": logging.WARNING, "httpx2": logging.WARNING, "httpx": logging.WARNING}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            line["trace_id"] = trace.format_trace_id(context.trace_id)
            line["span_id"] = trace.format_span_id(context.span_id)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure_logging(
    level: str | int, *, capture_content: bool = False, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record, as JSON lines, to ``stream`` (stderr); returns
    the handler. Replaces handlers installed before (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(floor)
    if not capture_content:
        for name, floor in _CONTENT_LOGGERS.items():
            logger = logging.getLogger(name)
            logger.setLevel(max(floor, logger.getEffectiveLevel()))
    return handler
