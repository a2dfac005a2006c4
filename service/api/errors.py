"""Domain errors to gRPC statuses with ``google.rpc.ErrorInfo`` (AIP-193),
and ``google.rpc.RetryInfo`` when the error says when to retry."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from service.core import errors
from service.core.errors import Translator

__all__ = [
    "DOMAIN",
    "MAX_MESSAGE_BYTES",
    "Translator",
    "caller_message",
    "classify",
    "status_code",
    "status_details",
]

log = logging.getLogger(__name__)

DOMAIN = "loom.v1"
# A status travels in HTTP/2 trailers, where the message is sent twice
# (grpc-message, percent-encoded: 9 bytes for a 3-byte character, and in
# grpc-status-details-bin) and a client refuses more than 8 KiB of metadata,
# turning the status into its own RESOURCE_EXHAUSTED. A message quoting the
# caller's input is cut to this many bytes as grpc-message sends them.
MAX_MESSAGE_BYTES = 2000


_CODES: list[tuple[type[errors.LoomError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def classify(
    exc: BaseException, translators: Sequence[Translator] = ()
) -> tuple[grpc.StatusCode, errors.LoomError]:
    """The status code and the domain error to report for ``exc``, after the
    first of ``translators`` that matches it; anything unknown is INTERNAL
    with a generic message (the detail is logged)."""
    error = errors.domain_error(exc, translators)
    if error is not None:
        code = status_code(type(error))
        if code is not grpc.StatusCode.INTERNAL:
            return code, error
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, errors.LoomError(
        "internal error; it has been logged", reason="INTERNAL"
    )


def status_code(kind: type[errors.LoomError]) -> grpc.StatusCode:
    """The status code errors of ``kind`` are reported with; INTERNAL for a
    LoomError outside the table."""
    for base, code in _CODES:
        if issubclass(kind, base):
            return code
    return grpc.StatusCode.INTERNAL


def _packed(detail: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def _wire_bytes(char: str) -> int:
    """Bytes ``char`` takes in grpc-message (printable ASCII but '%' as is,
    anything else percent-encoded byte by byte)."""
    return 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode())


def caller_message(error: errors.LoomError) -> str:
    """The error's message as sent: cut to ``MAX_MESSAGE_BYTES`` on the wire."""
    message = error.message
    if len(message) * 9 <= MAX_MESSAGE_BYTES:  # fits however it is encoded
        return message
    kept: list[str] = []
    size = 0
    for char in message:
        size += _wire_bytes(char)
        if size > MAX_MESSAGE_BYTES - 20:
            return "".join(kept) + " ... (cut off)"
        kept.append(char)
    return message


def status_details(code: grpc.StatusCode, error: errors.LoomError) -> bytes:
    """A serialized ``google.rpc.Status`` carrying an ``ErrorInfo`` (and a
    ``RetryInfo`` for a ``ResourceExhausted`` that knows its retry delay),
    for the ``grpc-status-details-bin`` trailer."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    details = [_packed(info)]
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromTimedelta(timedelta(seconds=error.retry_after))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=caller_message(error), details=details)
    serialized: bytes = status.SerializeToString()
    return serialized
