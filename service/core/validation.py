"""Checks on caller input that every entry point shares."""

from __future__ import annotations

from collections.abc import Sequence

from service.core.errors import InvalidArgument
from service.core.limits import (
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
)

__all__ = [
    "check_metadata",
    "check_text",
    "check_update_mask",
]


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


def check_update_mask(paths: Sequence[str], updatable: Sequence[str]) -> list[str]:
    """The fields an update changes, by AIP-134: the paths named, or every
    field in ``updatable`` for ``*`` alone (a full replacement: fields the
    request leaves unset go back to their defaults).

    Raises:
        InvalidArgument: no path, ``*`` beside other paths, or a path that is
            not in ``updatable``.
    """
    names = ", ".join(updatable)
    if not paths:
        raise InvalidArgument(
            f"update_mask names no field to change; list fields from {names}, or '*' for all",
            field="update_mask",
        )
    if "*" in paths:
        if len(paths) > 1:
            raise InvalidArgument(
                "update_mask '*' replaces every field and cannot be combined with other "
                "paths; send '*' alone or list the fields to change",
                field="update_mask",
            )
        return list(updatable)
    unknown = [p for p in paths if p not in updatable]
    if unknown:
        raise InvalidArgument(
            f"update_mask path {unknown[0]!r} cannot be updated; updatable fields are {names}",
            field="update_mask",
        )
    return list(dict.fromkeys(paths))
