"""The Conversations API: a conversation is a Loom thread (same id), its
items are the thread's messages. ``metadata`` is stored as sent; its keys
``assistant_id`` and ``user_id`` also choose, at creation, the assistant the
conversation belongs to and the user whose memories it reads and writes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core import ids
from service.core.errors import InvalidArgument, NotFound
from service.core.keys import Caller
from service.http.bodies import ConversationCreate, read
from service.http.door import Door
from service.http.listing import conversation_items, paging
from service.http.objects import conversation_object, items_of, message_of_item

__all__ = [
    "create",
    "create_items",
    "delete",
    "delete_item",
    "get",
    "get_item",
    "list_items",
    "thread_id_of",
    "update",
]


def thread_id_of(value: str) -> str:
    """The thread a conversation id names.

    Raises:
        NotFound: not a conversation id (so no such conversation).
    """
    try:
        return ids.check_id(ids.THREAD, value, "conversation")
    except InvalidArgument:
        raise NotFound("thread", value[:80]) from None


def _unfinished(what: str) -> InvalidArgument:
    # AddMessages and UpdateThread are other branches' work (conv-a); this
    # door maps to them once they merge.
    return InvalidArgument(f"{what} is not supported yet", field="items")


async def create(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/conversations``: a new thread (with ``items``, stored
    without a reply)."""
    body = await read(request, ConversationCreate, door.max_body)
    if body.items:
        raise _unfinished("creating a conversation with items")
    metadata = dict(body.metadata or {})
    thread = await door.threads.create(
        caller.tenant, metadata.get("assistant_id", ""), metadata.get("user_id", ""), metadata
    )
    return JSONResponse(conversation_object(thread))


async def get(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/conversations/{id}``."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    return JSONResponse(conversation_object(await door.threads.get(caller.tenant, thread_id)))


async def update(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/conversations/{id}``: replace its metadata."""
    thread_id_of(request.path_params["conversation_id"])
    raise _unfinished("changing a conversation's metadata")


async def delete(request: Request, door: Door, caller: Caller) -> Response:
    """``DELETE /v1/conversations/{id}``: the thread and its messages."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    await door.threads.delete(caller.tenant, thread_id)
    return JSONResponse({"id": thread_id, "object": "conversation.deleted", "deleted": True})


async def list_items(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/conversations/{id}/items``."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    cursor = paging(request.query_params)
    page = await conversation_items(door.threads, caller.tenant, thread_id, cursor)
    return JSONResponse(page)


async def create_items(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/conversations/{id}/items``: a store-only append."""
    thread_id_of(request.path_params["conversation_id"])
    raise _unfinished("adding items to a conversation")


async def _item(request: Request, door: Door, caller: Caller) -> dict[str, Any]:
    thread_id = thread_id_of(request.path_params["conversation_id"])
    item_id = request.path_params["item_id"]
    message_id, _ = message_of_item(item_id)
    message = await door.threads.find_message(caller.tenant, message_id)
    found = [i for i in items_of(message) if i["id"] == item_id] if message else []
    if message is None or message.thread_id != thread_id or not found:
        raise NotFound("item", item_id)
    return found[0]


async def get_item(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/conversations/{id}/items/{item_id}``."""
    return JSONResponse(await _item(request, door, caller))


async def delete_item(request: Request, door: Door, caller: Caller) -> Response:
    """``DELETE /v1/conversations/{id}/items/{item_id}``: refused. A thread's
    history is append-only (its summary, memories and token counts are
    built from it): fork the conversation before the item instead."""
    await _item(request, door, caller)
    raise InvalidArgument(
        "items cannot be deleted: a Loom conversation's history is append-only (its summary "
        "and memories were built from it); delete the conversation, or start a new one from "
        "the items you want to keep",
        field="item_id",
    )
