"""The Conversations API: a conversation is a Loom thread (same id), its
items are the thread's messages; items added to it are stored without a
reply (AddMessages). ``metadata`` is stored as sent; its keys
``assistant_id`` and ``user_id`` also choose, at creation, the assistant the
conversation belongs to and the user whose memories it reads and writes."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core import ids
from service.core.conversation import Added, BatchRequest
from service.core.errors import InvalidArgument, NotFound
from service.core.keys import Caller
from service.core.threads import ThreadDraft
from service.http.bodies import ConversationCreate, ConversationUpdate, ItemsCreate, read
from service.http.door import Door
from service.http.inputs import Input, input_items, new_messages
from service.http.listing import conversation_items, paging
from service.http.objects import conversation_object, items_of, list_object, message_of_item

__all__ = [
    "create",
    "create_items",
    "delete",
    "delete_item",
    "get",
    "get_item",
    "list_items",
    "store_items",
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


async def store_items(
    door: Door, tenant: str, items: list[Input], field: str, batch: BatchRequest
) -> Added:
    """``items`` (the request's ``field``) appended to ``batch``'s thread (a
    new one without a thread id) without a reply, by AddMessages.

    Raises:
        InvalidArgument: an item Loom cannot store (``param`` names the item).
        NotFound: no such conversation or assistant.
        ThreadBusy: a reply runs on the conversation.
    """
    batch.messages, starts = new_messages(items)
    try:
        return await door.conversation.add_messages(tenant, batch)
    except InvalidArgument as exc:
        # AddMessages names messages[j]; the request named items.
        where = exc.field or ""
        if not where.startswith("messages["):
            raise
        j, _, rest = where.removeprefix("messages[").partition("]")
        param = f"{field}[{starts[int(j)]}]{rest}" if j.isdigit() else field
        raise InvalidArgument(exc.message, field=param, reason=exc.reason) from None


async def create(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/conversations``: a new thread, with ``items`` stored in it
    without a reply (the thread is deleted again if they cannot be)."""
    body = await read(request, ConversationCreate, door.max_body)
    metadata = dict(body.metadata or {})
    assistant_id, user_id = metadata.get("assistant_id", ""), metadata.get("user_id", "")
    thread = await door.threads.create(caller.tenant, assistant_id, user_id, metadata)
    if not body.items:
        return JSONResponse(conversation_object(thread))
    batch = BatchRequest([], thread.thread_id)
    try:
        added = await store_items(
            door, caller.tenant, input_items(body.items, "items"), "items", batch
        )
    except BaseException:
        await door.threads.delete(caller.tenant, thread.thread_id)
        raise
    return JSONResponse(conversation_object(added.thread))


async def get(request: Request, door: Door, caller: Caller) -> Response:
    """``GET /v1/conversations/{id}``."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    return JSONResponse(conversation_object(await door.threads.get(caller.tenant, thread_id)))


async def update(request: Request, door: Door, caller: Caller) -> Response:
    """``POST /v1/conversations/{id}``: replace its metadata (UpdateThread).
    An ``assistant_id`` key naming another assistant moves the conversation
    to it; the user is the one chosen at creation."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    body = await read(request, ConversationUpdate, door.max_body)
    metadata = dict(body.metadata or {})
    thread = await door.threads.get(caller.tenant, thread_id)
    if metadata.get("user_id", thread.user_id) != thread.user_id:
        raise InvalidArgument(
            "metadata.user_id cannot change: a conversation's user (whose memories it reads "
            "and writes) is chosen when it is created",
            field="metadata.user_id",
        )
    draft = ThreadDraft(assistant_id=metadata.get("assistant_id", ""), metadata=metadata)
    paths = ["metadata"]
    if draft.assistant_id and draft.assistant_id != thread.assistant_id:
        paths.append("assistant_id")
    updated = await door.conversation.update_thread(caller.tenant, thread_id, draft, paths)
    return JSONResponse(conversation_object(updated))


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
    """``POST /v1/conversations/{id}/items``: a store-only append
    (AddMessages); answers with the items stored, in order."""
    thread_id = thread_id_of(request.path_params["conversation_id"])
    body = await read(request, ItemsCreate, door.max_body)
    batch = BatchRequest([], thread_id)
    added = await store_items(door, caller.tenant, input_items(body.items, "items"), "items", batch)
    items = [item for message in added.messages for item in items_of(message)]
    return JSONResponse(list_object(items, has_more=False))


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
