"""Opaque page tokens (AIP-158).

A token carries the sort key of the last item returned and a fingerprint of
the request's filters, so a token replayed with other filters is refused
rather than silently returning the wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json

from service.core.errors import InvalidArgument

__all__ = ["decode_token", "encode_token"]

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
