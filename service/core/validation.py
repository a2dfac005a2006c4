"""Checks on caller input that every entry point shares."""

from __future__ import annotations

from service.core.errors import InvalidArgument

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "check_metadata",
    "check_page_size",
    "check_text",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512


def check_text(value: str, field: str, limit: int, *, required: bool = False) -> str:
    """Return ``value`` if it fits ``limit`` characters (and is non-blank when
    required).

    Raises:
        InvalidArgument: blank when required, or too long.
    """
    if required and not value.strip():
        raise InvalidArgument(f"{field} is required and must not be blank", field=field)
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is {len(value):,} characters; the limit is {limit:,}", field=field
        )
    if "\x00" in value:
        raise InvalidArgument(f"{field} must not contain NUL characters", field=field)
    return value


def check_metadata(metadata: dict[str, str], field: str = "metadata") -> dict[str, str]:
    """Return a copy of ``metadata`` if it is within the limits.

    Raises:
        InvalidArgument: too many pairs, an empty or long key, a long value, a
            NUL character, or a key MongoDB cannot store (``$`` prefix or ``.``).
    """
    if len(metadata) > MAX_METADATA_PAIRS:
        raise InvalidArgument(
            f"{field} has {len(metadata)} pairs; the limit is {MAX_METADATA_PAIRS}", field=field
        )
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY:
            raise InvalidArgument(
                f"{field} keys must be 1 to {MAX_METADATA_KEY} characters", field=field
            )
        if "\x00" in key:
            raise InvalidArgument(
                f"{field} key {key[:MAX_METADATA_KEY]!r} contains a NUL character; keys must not",
                field=field,
            )
        if key.startswith("$") or "." in key:
            raise InvalidArgument(
                f"{field} key {key!r} must not start with '$' or contain '.'", field=field
            )
        if len(value) > MAX_METADATA_VALUE:
            raise InvalidArgument(
                f"{field} value for {key!r} is longer than {MAX_METADATA_VALUE} characters",
                field=field,
            )
        if "\x00" in value:
            raise InvalidArgument(
                f"{field} value for {key!r} contains a NUL character; values must not",
                field=field,
            )
    return dict(metadata)


def check_page_size(page_size: int) -> int:
    """Apply AIP-158: 0 means the default, oversize is clamped.

    Raises:
        InvalidArgument: negative.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)
