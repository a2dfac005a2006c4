"""Exceptions for failed calls, one class per ErrorInfo ``reason`` Loom sends.

Every class carries the gRPC ``code``, the ``message`` (written for a person),
the ``reason`` and ``metadata`` of the ``google.rpc.ErrorInfo`` detail, and
``retry_delay`` when the server sent a ``RetryInfo``. A reason this client
does not know becomes the class of its status code, so ``except NotFound``
keeps working when the server learns new reasons.

- ``LoomError``
  - ``InvalidArgument``: ``RequestIdReused``
  - ``NotFound``: ``AssistantNotFound``, ``ThreadNotFound``, ``RunNotFound``,
    ``MemoryNotFound``, ``OperationNotFound``
  - ``Unauthenticated``: ``ApiKeyMissing``, ``ApiKeyInvalid``
  - ``PermissionDenied``
  - ``Aborted``: ``ThreadBusy``, ``RequestInProgress``, ``LeaseLost``,
    ``ReplyInterrupted``
  - ``FailedPrecondition``: ``ModelNotConfigured``, ``ModelAuthFailed``,
    ``ModelNotFound``, ``ModelRejectedRequest``, ``RunExpired``,
    ``RequestFailed``, ``EmbeddingModelUnavailable``, ``EmbeddingModelMismatch``
  - ``ResourceExhausted``: ``RateLimited``, ``TooManyStreams``,
    ``ThreadQueueFull``, ``ModelRateLimited``, ``ToolRoundsExceeded``
  - ``Unavailable``: ``DatabaseUnavailable``, ``ServerShuttingDown``,
    ``ModelUnavailable``, ``ModelUnreachable``, ``ModelTimeout``,
    ``ModelStreamBroken``
  - ``DeadlineExceeded``, ``Cancelled``, ``Internal``, ``Unimplemented``,
    ``AlreadyExists``, ``OutOfRange``, ``DataLoss``, ``Unknown``
  - ``IncompleteStream``: a reply stream ended without its last event
"""

from __future__ import annotations

import grpc

from loom_client._status import StatusDetails

__all__ = [
    "Aborted",
    "AlreadyExists",
    "ApiKeyInvalid",
    "ApiKeyMissing",
    "AssistantNotFound",
    "Cancelled",
    "DataLoss",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "EmbeddingModelMismatch",
    "EmbeddingModelUnavailable",
    "FailedPrecondition",
    "IncompleteStream",
    "Internal",
    "InvalidArgument",
    "LeaseLost",
    "LoomError",
    "MemoryNotFound",
    "ModelAuthFailed",
    "ModelNotConfigured",
    "ModelNotFound",
    "ModelRateLimited",
    "ModelRejectedRequest",
    "ModelStreamBroken",
    "ModelTimeout",
    "ModelUnavailable",
    "ModelUnreachable",
    "NotFound",
    "OperationNotFound",
    "OutOfRange",
    "PermissionDenied",
    "RateLimited",
    "ReplyInterrupted",
    "RequestFailed",
    "RequestIdReused",
    "RequestInProgress",
    "ResourceExhausted",
    "RunExpired",
    "RunNotFound",
    "ServerShuttingDown",
    "ThreadBusy",
    "ThreadNotFound",
    "ThreadQueueFull",
    "TooManyStreams",
    "ToolRoundsExceeded",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_class",
    "error_from_status",
]


class LoomError(Exception):
    """Base of every error from a Loom call."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        domain: str = "",
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.domain = domain
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay

    def __str__(self) -> str:
        label = self.code.name + (f" {self.reason}" if self.reason else "")
        return f"{self.message} ({label})"


class IncompleteStream(LoomError):
    """A reply stream ended with an OK status but without its last event."""


# One class per status code; a reason this client does not know maps here.
class Cancelled(LoomError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unknown(LoomError):
    """The server or the channel reported an unknown error."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(LoomError):
    """The request is malformed; sending it again unchanged fails again."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(LoomError):
    """The call's deadline passed (the client's ``timeout``)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(LoomError):
    """No such object, or it belongs to another tenant."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(LoomError):
    """The object already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(LoomError):
    """The key may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(LoomError):
    """A limit was hit; ``retry_delay`` says when to try again, if known."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(LoomError):
    """The service or the object is not in a state to serve the request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(LoomError):
    """A concurrency conflict; the whole request may be sent again."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(LoomError):
    """A value is outside the range the server accepts."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(LoomError):
    """The server does not have this RPC (an older Loom)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(LoomError):
    """The server failed unexpectedly; the detail is in its log."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(LoomError):
    """The server or one of its dependencies is down; retried with back-off."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(LoomError):
    """Unrecoverable data loss."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(LoomError):
    """No valid API key came with the call."""

    code = grpc.StatusCode.UNAUTHENTICATED


# One class per reason Loom sends (service/core/errors.py and the reasons
# passed where errors are raised).
class RequestIdReused(InvalidArgument):
    """The request_id was used before for a different request."""

    reason = "REQUEST_ID_REUSED"


class AssistantNotFound(NotFound):
    """No such assistant (``metadata["assistant_id"]``)."""

    reason = "ASSISTANT_NOT_FOUND"


class ThreadNotFound(NotFound):
    """No such thread (``metadata["thread_id"]``)."""

    reason = "THREAD_NOT_FOUND"


class RunNotFound(NotFound):
    """No such run waiting for tool outputs (``metadata["run_id"]``)."""

    reason = "RUN_NOT_FOUND"


class MemoryNotFound(NotFound):
    """No such memory (``metadata["memory_id"]``)."""

    reason = "MEMORY_NOT_FOUND"


class OperationNotFound(NotFound):
    """No such memory operation (``metadata["operation_id"]``)."""

    reason = "OPERATION_NOT_FOUND"


class ApiKeyMissing(Unauthenticated):
    """The call carried no API key."""

    reason = "API_KEY_MISSING"


class ApiKeyInvalid(Unauthenticated):
    """The API key is unknown or revoked."""

    reason = "API_KEY_INVALID"


class ThreadBusy(Aborted):
    """Another reply is streaming on the thread, or a run waits for tool outputs."""

    reason = "THREAD_BUSY"


class LeaseLost(Aborted):
    """The replica serving the call lost the thread to another; retry."""

    reason = "LEASE_LOST"


class ReplyInterrupted(Aborted):
    """A newer message (``on_busy="interrupt"``) stopped this reply; what
    arrived is stored INCOMPLETE. Not retried: the newer message is answered
    with it in history."""

    reason = "REPLY_INTERRUPTED"


class RequestInProgress(Aborted):
    """A call with the same request_id is still being served."""

    reason = "REQUEST_IN_PROGRESS"


class ModelNotConfigured(FailedPrecondition):
    """The server has no model endpoint configured."""

    reason = "MODEL_NOT_CONFIGURED"


class ModelAuthFailed(FailedPrecondition):
    """The model endpoint refused the server's credentials."""

    reason = "MODEL_AUTH_FAILED"


class ModelNotFound(FailedPrecondition):
    """The model endpoint does not serve the model asked for."""

    reason = "MODEL_NOT_FOUND"


class ModelRejectedRequest(FailedPrecondition):
    """The model endpoint rejected the request."""

    reason = "MODEL_REJECTED_REQUEST"


class RunExpired(FailedPrecondition):
    """The run waited for tool outputs longer than the server allows."""

    reason = "RUN_EXPIRED"


class RequestFailed(FailedPrecondition):
    """The first attempt with this request_id failed and the thread moved on."""

    reason = "REQUEST_FAILED"


class EmbeddingModelUnavailable(FailedPrecondition):
    """The server cannot load its embedding model."""

    reason = "EMBEDDING_MODEL_UNAVAILABLE"


class EmbeddingModelMismatch(FailedPrecondition):
    """The assistant's memories were embedded by another model; reindex them."""

    reason = "EMBEDDING_MODEL_MISMATCH"


class ThreadQueueFull(ResourceExhausted):
    """Too many messages already wait for the thread's reply
    (``on_busy="enqueue"`` or ``"interrupt"``); ``retry_delay`` suggests a back-off."""

    reason = "THREAD_QUEUE_FULL"


class RateLimited(ResourceExhausted):
    """This API key sent more calls than its rate limit allows."""

    reason = "RATE_LIMITED"


class TooManyStreams(ResourceExhausted):
    """The tenant has as many replies streaming as it may."""

    reason = "TOO_MANY_STREAMS"


class ModelRateLimited(ResourceExhausted):
    """The model endpoint kept rate-limiting the server after its retries."""

    reason = "MODEL_RATE_LIMITED"


class ToolRoundsExceeded(ResourceExhausted):
    """The model asked for tools more times in one reply than allowed."""

    reason = "TOOL_ROUNDS_EXCEEDED"


class DatabaseUnavailable(Unavailable):
    """The server's database is unreachable or busy."""

    reason = "DATABASE_UNAVAILABLE"


class ServerShuttingDown(Unavailable):
    """The replica serving the call shut down and cut the reply short."""

    reason = "SERVER_SHUTTING_DOWN"


class ModelUnavailable(Unavailable):
    """The model endpoint failed (HTTP 5xx)."""

    reason = "MODEL_UNAVAILABLE"


class ModelUnreachable(Unavailable):
    """The server could not reach the model endpoint."""

    reason = "MODEL_UNREACHABLE"


class ModelTimeout(Unavailable):
    """The model endpoint did not answer in time."""

    reason = "MODEL_TIMEOUT"


class ModelStreamBroken(Unavailable):
    """The model endpoint broke off mid-reply; the part received is stored."""

    reason = "MODEL_STREAM_BROKEN"


def _subclasses(root: type[LoomError]) -> list[type[LoomError]]:
    found: list[type[LoomError]] = []
    for sub in root.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


_BY_REASON: dict[str, type[LoomError]] = {
    cls.reason: cls for cls in _subclasses(LoomError) if "reason" in vars(cls)
}
_BY_CODE: dict[grpc.StatusCode, type[LoomError]] = {
    cls.code: cls
    for cls in _subclasses(LoomError)
    if "code" in vars(cls) and cls is not IncompleteStream
}


def error_class(code: grpc.StatusCode, reason: str) -> type[LoomError]:
    """The class for ``reason``, else the one for ``code``."""
    return _BY_REASON.get(reason) or _BY_CODE.get(code, LoomError)


def error_from_status(code: grpc.StatusCode, message: str, details: StatusDetails) -> LoomError:
    """The exception for a failed call's status and its details."""
    cls = error_class(code, details.reason)
    return cls(
        message or code.name,
        code=code,
        reason=details.reason,
        domain=details.domain,
        metadata=details.metadata,
        retry_delay=details.retry_delay,
    )
