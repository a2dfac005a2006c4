"""Pagination (AIP-158): page sizes, opaque page tokens, and the one way a
List use case reads a page.

A token carries the sort key of the last item returned and a fingerprint of
the request's filters and the caller's tenant, so a token replayed with
other filters, or by another tenant, is refused rather than silently
returning the wrong page. (Tokens are not signed: a forged one can only
name a position in the forger's own list, which every read is scoped to.) A List reads one item more
than the page holds: that item's presence is what says a next page exists.
Lists newest first sort by creation time, then id (ids are random: they only
break ties): their key is a ``CreatedKey``; the others by a position (a
sequence number or an offset).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, TypeVar, overload

from service.core.errors import InvalidArgument
from service.core.limits import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from service.core.models import Page

__all__ = ["CreatedKey", "Cursor", "created", "encode_token", "open_cursor"]

CreatedKey = tuple[datetime, str]  # (create_time, id) of the last item of a page

_VERSION = 1

K = TypeVar("K", int, CreatedKey)
T = TypeVar("T")


def _fingerprint(filters: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(filters, sort_keys=True).encode()).hexdigest()[:16]


def encode_token(after: object, filters: dict[str, object]) -> str:
    """Return a token for the page that starts after ``after`` (a position or
    a ``CreatedKey``; anything else only to test that tokens are checked)."""
    key = [after[0].isoformat(), after[1]] if isinstance(after, tuple) else after
    raw = json.dumps({"v": _VERSION, "a": key, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, filters: dict[str, object]) -> object | None:
    """Return the sort key a token resumes after, as JSON, or None for no token.

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
            "page_token was issued for a request with other filters or ordering, or to another "
            "API key's tenant; send the same filters as the first page, or omit page_token to "
            "start again",
            field="page_token",
        )
    after: object = data["a"]
    return after


def _as_position(after: object) -> int | None:
    # bool is an int to Python, and no position is negative.
    if isinstance(after, bool) or not isinstance(after, int) or after < 0:
        return None
    return after


def _as_created(after: object) -> CreatedKey | None:
    if isinstance(after, list) and len(after) == 2 and all(isinstance(a, str) for a in after):
        try:
            moment = datetime.fromisoformat(after[0])
        except ValueError:
            return None
        if moment.tzinfo is not None:
            return moment, after[1]
    return None


def created(create_time: datetime | None, object_id: str) -> CreatedKey:
    """The sort key of an item listed newest first."""
    if create_time is None:  # stored objects all have one
        raise ValueError(f"{object_id} has no create_time to page by")
    return create_time, object_id


def _check_page_size(page_size: int) -> int:
    """Apply AIP-158: 0 means the default, oversize is clamped.

    Raises:
        InvalidArgument: negative.
    """
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative", field="page_size")
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    return min(page_size, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class Cursor(Generic[K]):
    """Where one List call starts and how many items it reads."""

    limit: int  # items in a full page
    after: K | None  # the sort key the page starts after; None on the first page
    filters: dict[str, object]

    @property
    def fetch(self) -> int:
        """How many items to read: a full page and one more."""
        return self.limit + 1

    def page(self, items: Sequence[T], key: Callable[[T], K]) -> Page[T]:
        """The page of ``items`` (read with ``fetch``), with a token for the
        next one made of ``key`` of its last item if there is more."""
        kept = list(items[: self.limit])
        more = len(items) > self.limit
        return Page(kept, encode_token(key(kept[-1]), self.filters) if more else "")


@overload
def open_cursor(
    tenant: str,
    page_size: int,
    page_token: str,
    filters: dict[str, object],
    by: Literal["position"],
) -> Cursor[int]: ...
@overload
def open_cursor(
    tenant: str,
    page_size: int,
    page_token: str,
    filters: dict[str, object],
    by: Literal["created"],
) -> Cursor[CreatedKey]: ...
def open_cursor(
    tenant: str,
    page_size: int,
    page_token: str,
    filters: dict[str, object],
    by: Literal["position", "created"],
) -> Cursor[int] | Cursor[CreatedKey]:
    """The cursor of ``tenant``'s List request whose items sort ``by`` a
    position or by creation time (newest first); ``filters`` are the
    request's filters and ordering. Its tokens are tied to both, under the
    key "tenant" of the filters.

    Raises:
        InvalidArgument: a negative page size, or a token that is malformed
            or was issued for other filters or another tenant.
    """
    limit = _check_page_size(page_size)
    filters = {**filters, "tenant": tenant}
    raw = _decode_token(page_token, filters)
    if by == "position":
        position = _as_position(raw)
        if raw is not None and position is None:
            raise InvalidArgument("page_token is malformed", field="page_token")
        return Cursor(limit, position, filters)
    key = _as_created(raw)
    if raw is not None and key is None:
        raise InvalidArgument("page_token is malformed", field="page_token")
    return Cursor(limit, key, filters)
