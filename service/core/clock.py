"""Wall-clock time, truncated to what MongoDB stores (milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["now"]


def now() -> datetime:
    """The current UTC time at millisecond precision, so a value read back
    from the database equals the value written."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)
