"""Driver errors that waiting cures (the database down, failing over, busy),
as the domain's ``DatabaseUnavailable``; the wiring registers them with the API's
error table and the job runner uses them to tell waiting from failing."""

from __future__ import annotations

from collections.abc import Callable

from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from service.core.errors import DatabaseUnavailable, LoomError

__all__ = ["transient", "translate", "translations"]

# Server error codes MongoDB's drivers retry (not primary, shutting down,
# host unreachable, network timeout, exceeded time limit, ...) and
# ExecutionTimeout (50).
_TRANSIENT_CODES = frozenset(
    {6, 7, 50, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)
# FerretDB over SQLite answers a write that met another's lock with an
# internal error naming SQLite's code; the next attempt usually succeeds.
_BUSY_WORDS = ("SQLITE_BUSY", "database is locked")


def transient(exc: BaseException) -> bool:
    """True when retrying the same operation later can succeed."""
    if isinstance(exc, ConnectionFailure):
        return True
    if not isinstance(exc, OperationFailure):
        return False
    if exc.code in _TRANSIENT_CODES or exc.timeout:
        return True
    if exc.has_error_label("RetryableWriteError") or exc.has_error_label(
        "TransientTransactionError"
    ):
        return True
    text = str(exc)
    return any(word in text for word in _BUSY_WORDS)


def translate(exc: BaseException) -> LoomError | None:
    """``DatabaseUnavailable`` for an error waiting cures, None for any
    other (left to the caller's own handling)."""
    if isinstance(exc, ConnectionFailure):
        return DatabaseUnavailable("the database is unreachable; retry later")
    if transient(exc):
        return DatabaseUnavailable("the database is busy; retry in a moment")
    return None


def translations() -> list[tuple[type[BaseException], Callable[[BaseException], LoomError | None]]]:
    """Entries for the API's error table (``service.api.errors.register``)."""
    return [(PyMongoError, translate)]
