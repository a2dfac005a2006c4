"""Object ids: a type prefix and 24 hex digits that sort by creation time."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

from service.core.errors import InvalidArgument
from service.core.limits import ID_HEX_DIGITS

__all__ = [
    "ASSISTANT",
    "JOB",
    "MEMORY",
    "MESSAGE",
    "OPERATION",
    "RUN",
    "THREAD",
    "check_id",
    "derived_id",
    "new_id",
]

ASSISTANT = "asst"
THREAD = "thread"
MESSAGE = "msg"
MEMORY = "mem"
OPERATION = "memop"
JOB = "job"
RUN = "run"

_KINDS = {
    ASSISTANT: "assistant",
    THREAD: "thread",
    MESSAGE: "message",
    MEMORY: "memory",
    OPERATION: "operation",
    JOB: "job",
    RUN: "run",
}
_PATTERNS = {prefix: re.compile(rf"^{prefix}_[0-9a-f]{{{ID_HEX_DIGITS}}}$") for prefix in _KINDS}
_lock = threading.Lock()
_counter = int.from_bytes(os.urandom(3), "big")
_process = os.urandom(5)


def new_id(prefix: str) -> str:
    """Return a new id: 4 bytes of seconds, 5 per-process random bytes and a
    3-byte counter (the ObjectId layout), so ids sort by creation second and
    never collide across replicas."""
    global _counter  # noqa: PLW0603 - a process-wide counter is the point
    with _lock:
        _counter = (_counter + 1) % 0xFFFFFF
        count = _counter
    raw = int(time.time()).to_bytes(4, "big") + _process + count.to_bytes(3, "big")
    return f"{prefix}_{raw.hex()}"


def check_id(prefix: str, value: str, field: str) -> str:
    """Return ``value`` if it is a well-formed id of that kind.

    Raises:
        InvalidArgument: empty or malformed.
    """
    kind = _KINDS[prefix]
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if not _PATTERNS[prefix].match(value):
        raise InvalidArgument(
            f"{field} {value[:80]!r} is not a {kind} id (expected '{prefix}_' and "
            f"{ID_HEX_DIGITS} hex digits)",
            field=field,
        )
    return value


def derived_id(prefix: str, *parts: str) -> str:
    """A deterministic id of that kind from ``parts``: writes keyed by it are
    idempotent (a retried job re-creates the same memory, not a second one)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:ID_HEX_DIGITS]
    return f"{prefix}_{digest}"
