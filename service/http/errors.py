"""Domain errors in OpenAI's error shape: one table from Loom's error
classes to HTTP status codes and error types, the ``{"error": {...}}``
body, and the headers that say when (and whether) to retry.

The body's ``code`` is Loom's ErrorInfo reason in lower case (the same
reasons as the gRPC door, see the README's table); ``param`` names the
request field at fault, in the HTTP request's terms. Anything that is not
a domain error is a 500 with a generic message (the detail is logged).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

from service.core import errors
from service.core.errors import LoomError, Translator
from service.telemetry import annotate

__all__ = ["PARAMS", "HttpError", "error_event", "error_response", "http_error"]

log = logging.getLogger(__name__)

# The one table: the first class an error is an instance of decides.
_STATUS: list[tuple[type[LoomError], int, str]] = [
    (errors.InvalidArgument, 400, "invalid_request_error"),
    (errors.NotFound, 404, "invalid_request_error"),
    (errors.Unauthenticated, 401, "invalid_request_error"),
    (errors.Aborted, 409, "invalid_request_error"),  # a busy conversation, a lost lease
    (errors.FailedPrecondition, 400, "invalid_request_error"),
    (errors.Unavailable, 503, "server_error"),
    (errors.ResourceExhausted, 429, "rate_limit_error"),
    (errors.DeadlineExceeded, 504, "server_error"),
]
# Loom's names for the objects of this door: a thread is a conversation.
_KINDS = {"THREAD_NOT_FOUND": ("conversation", "thread_id")}
# Loom's field names, as the HTTP requests name them (first prefix wins).
PARAMS: tuple[tuple[str, str], ...] = (
    ("content", "input"),
    ("thread_id", "conversation"),
    ("assistant_id", "metadata.assistant_id"),
    ("user_id", "metadata.user_id"),
    ("tool_outputs", "input"),
)
_INTERNAL = LoomError("internal error; it has been logged", reason="INTERNAL")


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error as this door reports it."""

    status: int
    type: str
    message: str
    code: str
    param: str | None
    retry_after: float | None = None

    def body(self) -> dict[str, Any]:
        """OpenAI's error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def _param(field: str | None, params: Sequence[tuple[str, str]]) -> str | None:
    if not field:
        return None
    field = field.replace(".function.", ".")  # tools[0].function.name -> tools[0].name
    for loom, http in params:
        if field == loom or field.startswith((f"{loom}.", f"{loom}[")):
            return http + field[len(loom) :]
    return field


def http_error(
    exc: BaseException,
    translators: Sequence[Translator] = (),
    params: Sequence[tuple[str, str]] = PARAMS,
) -> HttpError:
    """How ``exc`` is reported: its status, type, message, code and param."""
    error = errors.domain_error(exc, translators)
    row = next((r for r in _STATUS if error is not None and isinstance(error, r[0])), None)
    if error is None or row is None:
        log.error("unexpected error", exc_info=exc)
        annotate(error_reason=_INTERNAL.reason, exception_type=type(exc).__qualname__)
        return HttpError(500, "server_error", _INTERNAL.message, "internal", None)
    annotate(error_reason=error.reason)
    status, kind, message = row[1], row[2], error.message
    if error.reason in _KINDS:
        name, key = _KINDS[error.reason]
        message = f"{name} {error.metadata.get(key, '')!r} not found"
    retry = error.retry_after if isinstance(error, errors.ResourceExhausted) else None
    field = error.field if isinstance(error, errors.InvalidArgument) else None
    return HttpError(
        status, kind, message, error.reason.lower(), _param(field, params), retry_after=retry
    )


def error_response(
    error: HttpError, *, retry: bool | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """``error`` as a response. ``Retry-After`` (and OpenAI's
    ``retry-after-ms``) when the error knows its delay; ``retry`` False says
    ``x-should-retry: false`` (the request had an effect a retry would
    repeat), which OpenAI's clients obey instead of retrying by status."""
    extra = dict(headers or {})
    if error.retry_after is not None:
        extra["retry-after"] = str(max(1, math.ceil(error.retry_after)))
        extra["retry-after-ms"] = str(max(1, math.ceil(error.retry_after * 1000)))
    if retry is not None:
        extra["x-should-retry"] = "true" if retry else "false"
    return JSONResponse(error.body(), status_code=error.status, headers=extra)


def error_event(error: HttpError) -> dict[str, Any]:
    """``error`` as a stream's ``error`` event (its sequence number is set by
    the stream)."""
    return {"type": "error", "code": error.code, "message": error.message, "param": error.param}
