"""Domain errors, each with a stable machine-readable ``reason``.

The tree (the API layer maps each class to one gRPC status code):

- ``LoomError``
  - ``InvalidArgument``: the request is malformed (INVALID_ARGUMENT)
  - ``NotFound``: no such object for this tenant (NOT_FOUND)
  - ``Unauthenticated``: missing, unknown or revoked API key (UNAUTHENTICATED)
  - ``ThreadBusy``: another reply is streaming on the thread (ABORTED)
  - ``Aborted``: a concurrency conflict the caller may retry (ABORTED)
    - ``ReplyInterrupted``: a newer message stopped this reply (ABORTED)
    - ``LeaseLost``: the lease this work ran under lapsed or was taken over
      (ABORTED)
  - ``FailedPrecondition``: the system is not in a state to serve this
    (FAILED_PRECONDITION)
  - ``Unavailable``: a dependency (model endpoint, database) is down
    (UNAVAILABLE)
    - ``DatabaseUnavailable``: the database is unreachable or too busy
      - ``LeaseUnconfirmed``: a reply's lease could not be renewed because
        the database did not answer
    - ``ShuttingDown``: the server stopped while the call ran
  - ``ResourceExhausted``: the model endpoint rate-limited us
    (RESOURCE_EXHAUSTED)
    - ``RateLimited``: the caller's API key is over its call rate
    - ``TooManyStreams``: the caller's tenant has its most reply streams open
    - ``ThreadQueueFull``: too many messages wait for the thread's reply
  - ``DeadlineExceeded``: a dependency did not answer in time
    (DEADLINE_EXCEEDED)

Adapter exceptions that mean something to a caller (the database is down)
become domain errors through ``Translator`` entries the wiring builds, so
that each door (gRPC, HTTP) maps one hierarchy and knows no driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

__all__ = [
    "Aborted",
    "DatabaseUnavailable",
    "DeadlineExceeded",
    "FailedPrecondition",
    "InvalidArgument",
    "LeaseLost",
    "LeaseUnconfirmed",
    "LoomError",
    "NotFound",
    "RateLimited",
    "ReplyInterrupted",
    "ResourceExhausted",
    "ShuttingDown",
    "ThreadBusy",
    "ThreadQueueFull",
    "TooManyStreams",
    "Translator",
    "Unauthenticated",
    "Unavailable",
    "domain_error",
]


class LoomError(Exception):
    """Base of every error that is meant to reach the caller.

    ``message`` is shown to the caller verbatim, so it must say what went
    wrong and what to do about it, and never carry secrets or stack traces.
    ``reason`` is an UPPER_SNAKE_CASE constant for ``google.rpc.ErrorInfo``;
    ``metadata`` adds machine-readable detail (ids, field names).
    """

    reason = "LOOM_ERROR"

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})

    @property
    def explanation(self) -> str:
        """The message, for telemetry (``service.telemetry.spans.Explained``):
        written for callers, so a span may record it."""
        return self.message


class InvalidArgument(LoomError):
    """The request itself is wrong; retrying it unchanged will fail again."""

    reason = "INVALID_ARGUMENT"

    def __init__(
        self, message: str, *, field: str | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason, metadata={"field": field} if field else None)
        self.field = field


class NotFound(LoomError):
    """The object does not exist, or belongs to another tenant."""

    reason = "NOT_FOUND"

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(
            f"{kind} {object_id!r} not found",
            reason=f"{kind.upper()}_NOT_FOUND",
            metadata={f"{kind}_id": object_id},
        )


class Unauthenticated(LoomError):
    """No valid API key came with the call."""

    reason = "API_KEY_INVALID"


class Aborted(LoomError):
    """A concurrency conflict; the caller may retry the whole request."""

    reason = "ABORTED"


class ThreadBusy(Aborted):
    """Another reply holds the thread's lease."""

    reason = "THREAD_BUSY"

    def __init__(self, thread_id: str, waiting: str = "") -> None:
        super().__init__(
            f"thread {thread_id!r} is busy: {waiting}"
            if waiting
            else f"thread {thread_id!r} is busy with another reply; send the message again "
            "once that reply has completed",
            metadata={"thread_id": thread_id},
        )


class LeaseLost(Aborted):
    """The lease a reply or job ran under lapsed or was taken by another
    replica, so its work stopped before writing anything more."""

    reason = "LEASE_LOST"

    def __init__(self, key: str) -> None:
        super().__init__(
            f"{key!r} was taken over by another replica while this work ran; "
            "nothing more was written: send the request again",
            metadata={"lease": key},
        )


class ReplyInterrupted(Aborted):
    """A newer message on the thread (SendMessage with on_busy INTERRUPT)
    stopped this reply; what it had is stored INCOMPLETE."""

    reason = "REPLY_INTERRUPTED"

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"a newer message on thread {thread_id!r} interrupted this reply; what you received "
            "is stored INCOMPLETE and the newer message is answered with it in history",
            metadata={"thread_id": thread_id},
        )


class FailedPrecondition(LoomError):
    """The service or the object is not in a state to serve the request."""

    reason = "FAILED_PRECONDITION"


class Unavailable(LoomError):
    """A dependency is down; the caller may retry later."""

    reason = "UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    """The database is unreachable, failing over or too busy; waiting cures it."""

    reason = "DATABASE_UNAVAILABLE"


class LeaseUnconfirmed(DatabaseUnavailable):
    """A reply's lease could not be renewed before it would lapse because the
    database did not answer: the reply stopped, and its final state is
    written when the database is back (unless another replica took the
    thread over first)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"the database stopped answering while the reply on {key!r} ran; the reply was "
            "stopped, and what you received is stored as it once the database is back",
            metadata={"lease": key},
        )


class ShuttingDown(Unavailable):
    """The replica serving the call is shutting down and cut it short."""

    reason = "SERVER_SHUTTING_DOWN"

    def __init__(self) -> None:
        super().__init__(
            "the server is shutting down and stopped this reply (what you received is stored "
            "INCOMPLETE); send the message again, another replica serves it"
        )


class ResourceExhausted(LoomError):
    """The model endpoint is rate-limiting; the caller may retry later.

    ``retry_after`` (seconds), when known, reaches the caller as a
    ``google.rpc.RetryInfo``.
    """

    reason = "MODEL_RATE_LIMITED"
    retry_after: float | None = None


class RateLimited(ResourceExhausted):
    """The API key made more calls than its rate allows."""

    reason = "RATE_LIMITED"

    def __init__(self, rate: float, burst: int, retry_after: float) -> None:
        super().__init__(
            f"this API key is over its limit of {rate:g} calls per second (bursts of "
            f"{burst}); retry in {retry_after:.2f} s",
            metadata={"rate": f"{rate:g}", "burst": str(burst)},
        )
        self.retry_after = retry_after


class TooManyStreams(ResourceExhausted):
    """The tenant has as many SendMessage/SubmitToolOutputs streams open as
    it may."""

    reason = "TOO_MANY_STREAMS"

    def __init__(self, limit: int, retry_after: float) -> None:
        super().__init__(
            f"this tenant already has {limit} SendMessage/SubmitToolOutputs streams open, "
            "its limit; retry when one has finished",
            metadata={"limit": str(limit)},
        )
        self.retry_after = retry_after


class ThreadQueueFull(ResourceExhausted):
    """As many messages as a thread may queue already wait for its reply
    (SendMessage with on_busy ENQUEUE or INTERRUPT)."""

    reason = "THREAD_QUEUE_FULL"

    def __init__(self, thread_id: str, limit: int, retry_after: float) -> None:
        super().__init__(
            f"thread {thread_id!r} already has {limit} messages waiting for its reply, the "
            "limit (LOOM_MAX_QUEUED_PER_THREAD); send again once some are answered",
            metadata={"thread_id": thread_id, "limit": str(limit)},
        )
        self.retry_after = retry_after


class DeadlineExceeded(LoomError):
    """A dependency did not answer in time."""

    reason = "DEADLINE_EXCEEDED"


Translator: TypeAlias = tuple[type[BaseException], Callable[[BaseException], "LoomError | None"]]
"""An adapter exception type that means something to the caller (the
database is down, say) and the domain error it becomes (None: not one the
translator knows, left to the next entry)."""


def domain_error(exc: BaseException, translators: Sequence[Translator] = ()) -> LoomError | None:
    """``exc`` as a domain error: itself if it is one, else what the first
    matching translator makes of it; None for anything else (unexpected)."""
    if isinstance(exc, LoomError):
        return exc
    for kind, translate in translators:
        translated = translate(exc) if isinstance(exc, kind) else None
        if translated is not None:
            return translated
    return None
