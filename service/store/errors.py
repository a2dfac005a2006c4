"""Driver errors that waiting cures (the database down, failing over, busy),
as the domain's ``DatabaseUnavailable``; the wiring registers them with the API's
error table and the job runner uses them to tell waiting from failing."""

from __future__ import annotations

import re
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
# FerretDB answers what its storage refused with an internal error (code 1,
# or a write error) that carries the storage's own words. Over SQLite: a write that met
# another's lock. Over PostgreSQL: PostgreSQL down or restarting (pgx's
# "failed to connect to", a connection cut mid-query), and the SQLSTATEs
# below. Each is cured by trying again later.
_BUSY_WORDS = (
    "SQLITE_BUSY",
    "database is locked",
    "failed to connect to",
    "conn closed",
    "unexpected EOF",
)
_SQLSTATE = re.compile(r"\(SQLSTATE (\w{5})\)")
# Class 08 (connection exception), class 53 (insufficient resources: too
# many connections, out of memory) and class 57P (shutting down, starting
# up) whatever their last digits; and serialization failure, deadlock
# detected, lock not available (lock_timeout), object in use and a
# statement cancelled by statement_timeout.
_SQLSTATE_CLASSES = ("08", "53", "57P")
_SQLSTATES = frozenset({"40001", "40P01", "55P03", "55006", "57014"})


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
    return _storage_transient(str(exc))


def _storage_transient(text: str) -> bool:
    """True when FerretDB's internal error names a storage failure that
    passes (``_BUSY_WORDS``, ``_SQLSTATES``)."""
    if any(word in text for word in _BUSY_WORDS):
        return True
    found = _SQLSTATE.search(text)
    if found is None:
        return False
    state = found.group(1)
    return state in _SQLSTATES or state.startswith(_SQLSTATE_CLASSES)


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
