"""Lists of items, paged as OpenAI's clients page them: ``limit`` (1 to
100, default 20), ``order`` (``asc`` or ``desc``, default ``desc``) and
``after``, the id of the last item of the previous page. A conversation's
items are read from the thread a page at a time; a response's input items
are the messages stored between the previous reply and it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidArgument, NotFound
from service.core.limits import MAX_PAGE_SIZE
from service.core.models import Message, Role
from service.core.threads import Threads
from service.http.objects import items_of, list_object, message_of_item

__all__ = ["Paging", "conversation_items", "input_messages", "items_page", "paging"]

JSON = dict[str, Any]
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Paging:
    """A list request's cursor."""

    limit: int = _DEFAULT_LIMIT
    descending: bool = True
    after: str = ""


def paging(query: Mapping[str, str]) -> Paging:
    """The cursor of a list request's query (``include`` is accepted and
    ignored: Loom's items carry everything they have).

    Raises:
        InvalidArgument: a limit or order out of range.
    """
    raw = query.get("limit", str(_DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_LIMIT:
        raise InvalidArgument(f"limit must be a whole number from 1 to {_MAX_LIMIT}", field="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidArgument("order must be 'asc' or 'desc'", field="order")
    return Paging(int(raw), order == "desc", query.get("after", ""))


def _ordered(message: Message, descending: bool) -> list[JSON]:
    items = items_of(message)
    return items[::-1] if descending else items


async def _resume(
    threads: Threads, tenant: str, thread_id: str, cursor: Paging
) -> tuple[int | None, list[JSON]]:
    """Where a page starts: the sequence to read after, and the items of the
    ``after`` item's message that come after it."""
    if not cursor.after:
        return None, []
    try:
        message_id, _ = message_of_item(cursor.after)
    except NotFound:
        message_id = ""
    message = await threads.find_message(tenant, message_id) if message_id else None
    if message is None or message.thread_id != thread_id:
        raise InvalidArgument(
            f"after {cursor.after[:80]!r} is not an item of this list", field="after"
        )
    items = _ordered(message, cursor.descending)
    ids = [item["id"] for item in items]
    rest = items[ids.index(cursor.after) + 1 :] if cursor.after in ids else []
    return message.sequence, rest


async def conversation_items(threads: Threads, tenant: str, thread_id: str, cursor: Paging) -> JSON:
    """One page of a conversation's items.

    Raises:
        NotFound: no such conversation.
        InvalidArgument: ``after`` is not one of its items.
    """
    await threads.get(tenant, thread_id)
    position, items = await _resume(threads, tenant, thread_id, cursor)
    batch_size = min(cursor.limit + 1, MAX_PAGE_SIZE)
    while len(items) <= cursor.limit:
        batch = await threads.read_messages(
            tenant, thread_id, after=position, limit=batch_size, descending=cursor.descending
        )
        for message in batch:
            items += _ordered(message, cursor.descending)
        if len(batch) < batch_size:
            break
        position = batch[-1].sequence
    return list_object(items[: cursor.limit], has_more=len(items) > cursor.limit)


async def input_messages(threads: Threads, tenant: str, reply: Message) -> list[Message]:
    """The messages a reply answered, oldest first: those stored after the
    reply before it (the user's message, or the tool outputs of a round,
    and any items added between)."""
    found: list[Message] = []
    position: int | None = reply.sequence
    while position is not None and position > 0:
        batch = await threads.read_messages(
            tenant, reply.thread_id, after=position, limit=MAX_PAGE_SIZE, descending=True
        )
        for message in batch:
            if message.role is Role.ASSISTANT:
                return found[::-1]
            found.append(message)
        position = batch[-1].sequence if len(batch) == MAX_PAGE_SIZE else None
    return found[::-1]


def items_page(messages: list[Message], cursor: Paging) -> JSON:
    """One page of the items of ``messages`` (oldest first), in memory.

    Raises:
        InvalidArgument: ``after`` is not one of the items.
    """
    items = [item for m in messages for item in items_of(m)]
    if cursor.descending:
        items.reverse()
    start = 0
    if cursor.after:
        ids = [item["id"] for item in items]
        if cursor.after not in ids:
            raise InvalidArgument(
                f"after {cursor.after[:80]!r} is not an item of this list", field="after"
            )
        start = ids.index(cursor.after) + 1
    page = items[start : start + cursor.limit]
    return list_object(page, has_more=start + cursor.limit < len(items))
