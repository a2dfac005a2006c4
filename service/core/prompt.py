"""Turning a thread into the prompt the model sees."""

from __future__ import annotations

from collections.abc import Iterable

from service.core.models import Message, MessageStatus, Role
from service.core.ports import ChatTurn

__all__ = ["build_prompt"]


def _replayable(message: Message) -> bool:
    if message.status is MessageStatus.IN_PROGRESS:
        return False
    # A reply that failed before producing text says nothing to the model.
    return not (message.role is Role.ASSISTANT and not message.content)


def build_prompt(instructions: str, history: Iterable[Message], new: Message) -> list[ChatTurn]:
    """The assistant's instructions, the thread's history in order, then the
    new user message. Replies that produced no text are left out; replies cut
    short keep what they said."""
    turns = [ChatTurn("system", instructions)] if instructions else []
    turns.extend(ChatTurn(m.role.value, m.content) for m in history if _replayable(m))
    turns.append(ChatTurn(new.role.value, new.content))
    return turns
