"""What a fact-extraction job reads: the one exchange of a reply (the user's
message and the reply), or a batch of messages added without a reply
(AddMessages), whose user messages are one side and the assistant's the
other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.core.budget import truncate_middle
from service.core.models import Message, Role
from service.core.ports import MessageStore

__all__ = ["MAX_BATCH_SIDE_CHARS", "batch_payload", "read_exchange"]

MAX_BATCH_SIDE_CHARS = 24_000  # of each side of a batch shown to the model


def batch_payload(
    assistant_id: str, user_id: str, thread_id: str, messages: Sequence[Message]
) -> dict[str, Any]:
    """The extraction job's payload for a batch (all but its model): the
    batch's sequence numbers, and its last user message and last message
    standing for the exchange's two sides."""
    users = [m for m in messages if m.role is Role.USER]
    return {
        "assistant_id": assistant_id,
        "user_id": user_id,
        "thread_id": thread_id,
        "batch": [messages[0].sequence, messages[-1].sequence],
        "user_message_id": users[-1].message_id,
        "reply_message_id": messages[-1].message_id,
        "tool_outputs": [],
    }


async def read_exchange(
    messages: MessageStore, tenant: str, payload: dict[str, Any]
) -> tuple[list[Message], str, str] | None:
    """The user messages to index, and the user's and the assistant's side
    as text (each side of a batch capped); None if the messages are gone."""
    if "batch" in payload:
        first, last = (int(s) for s in payload["batch"])
        batch = await messages.find_page(
            tenant, payload["thread_id"], last - first + 1, first - 1, False
        )
        users = [m for m in batch if m.role is Role.USER]
        if not users:
            return None
        replies = [m.content for m in batch if m.role is Role.ASSISTANT and m.content]
        return (
            users,
            truncate_middle("\n\n".join(m.content for m in users), MAX_BATCH_SIDE_CHARS),
            truncate_middle("\n\n".join(replies), MAX_BATCH_SIDE_CHARS),
        )
    user = await messages.get(tenant, payload["user_message_id"])
    reply = await messages.get(tenant, payload["reply_message_id"])
    if user is None or reply is None:
        return None
    return [user], user.content, reply.content
