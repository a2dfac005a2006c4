"""Object ids: a type prefix and 32 random hex digits (128 bits).

Random, so an id can be neither guessed nor read for when, where or after
what else it was made (ids once came from a clock, a per-process tag and a
counter shared by every tenant, so one tenant's ids showed the gaps left by
others' activity). Nothing orders by id: messages by their sequence number,
lists by creation time. Ids of the earlier form (24 hex digits) are still
accepted, so objects stored before stay reachable.
"""

from __future__ import annotations

import hashlib
import re
import secrets

from service.core.errors import InvalidArgument
from service.core.limits import ID_HEX_DIGITS, LEGACY_ID_HEX_DIGITS

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
_PATTERNS = {
    prefix: re.compile(
        rf"^{prefix}_(?:[0-9a-f]{{{ID_HEX_DIGITS}}}|[0-9a-f]{{{LEGACY_ID_HEX_DIGITS}}})$"
    )
    for prefix in _KINDS
}


def new_id(prefix: str) -> str:
    """Return a new id of that kind: 128 bits from the system's CSPRNG."""
    return f"{prefix}_{secrets.token_hex(ID_HEX_DIGITS // 2)}"


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
    idempotent (a retried job re-creates the same memory, not a second one).
    It is as hard to guess as the random ids among ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:ID_HEX_DIGITS]
    return f"{prefix}_{digest}"
