"""Opaque page tokens (AIP-158).

A token carries the sort key of the last item returned and a fingerprint of
the request's filters, so a token replayed with other filters is refused
rather than silently returning the wrong page. Lists newest first sort by
creation time, then id (ids are random: they only break ties): their key
is a ``CreatedKey``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from datetime import datetime

from service.core.errors import InvalidArgument

__all__ = [
    "CreatedKey",
    "created_key",
    "decode_created",
    "decode_position",
    "decode_token",
    "encode_token",
]

CreatedKey = tuple[datetime, str]  # (create_time, id) of the last item of a page

_VERSION = 1


def _fingerprint(filters: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_token(after: object, filters: dict[str, object]) -> str:
    """Return a token for the page that starts after ``after``."""
    raw = json.dumps({"v": _VERSION, "a": after, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: dict[str, object]) -> object | None:
    """Return the sort key a token resumes after, or None for no token.

    Raises:
        InvalidArgument: the token is malformed or was issued for other filters.
    """
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        valid = isinstance(data, dict) and data.get("v") == _VERSION and "a" in data
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        valid = False
    if not valid:
        raise InvalidArgument(
            "page_token is not a token this service issued; omit it to start from the first page",
            field="page_token",
        )
    if data.get("f") != _fingerprint(filters):
        raise InvalidArgument(
            "page_token was issued for a request with other filters or ordering; send the same "
            "filters as the first page, or omit page_token to start again",
            field="page_token",
        )
    after: object = data["a"]
    return after


def created_key(create_time: datetime | None, object_id: str) -> list[str]:
    """The sort key of an item listed newest first, as a token carries it."""
    if create_time is None:  # stored objects all have one
        raise ValueError(f"{object_id} has no create_time to page by")
    return [create_time.isoformat(), object_id]


def decode_created(token: str, filters: dict[str, object]) -> CreatedKey | None:
    """The ``created_key`` a token resumes after, or None for no token.

    Raises:
        InvalidArgument: the token is malformed or was issued for other filters.
    """
    after = decode_token(token, filters)
    if after is None:
        return None
    if isinstance(after, list) and len(after) == 2 and all(isinstance(a, str) for a in after):
        try:
            moment = datetime.fromisoformat(after[0])
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment, str(after[1])
    raise InvalidArgument("page_token is malformed", field="page_token")


def decode_position(token: str, filters: dict[str, object]) -> int | None:
    """The position (a sequence number or an offset, never negative) a
    token resumes after, or None for no token.

    Raises:
        InvalidArgument: the token is malformed or was issued for other filters.
    """
    after = decode_token(token, filters)
    if after is None:
        return None
    # bool is an int to Python, and no position is negative.
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        raise InvalidArgument("page_token is malformed", field="page_token")
    return after
