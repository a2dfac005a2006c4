"""Turning a thread into the prompt the model sees."""

from __future__ import annotations

from collections.abc import Iterable

from service.core.models import ContextEntry, MessageStatus, Role
from service.core.ports import ChatTurn

__all__ = ["build_prompt"]


def _replayable(entry: ContextEntry) -> bool:
    if entry.status is MessageStatus.IN_PROGRESS:
        return False
    # A reply that failed before producing text says nothing to the model.
    return not (entry.role is Role.ASSISTANT and not entry.content)


def build_prompt(
    instructions: str, history: Iterable[ContextEntry], new: ContextEntry
) -> list[ChatTurn]:
    """The assistant's instructions, the thread's history in order, then the
    new user message. Replies that produced no text are left out; replies cut
    short keep what they said."""
    turns = [ChatTurn("system", instructions)] if instructions else []
    turns.extend(
        ChatTurn(e.role.value, e.content)
        for e in history
        if e.sequence < new.sequence and _replayable(e)
    )
    turns.append(ChatTurn(new.role.value, new.content))
    return turns
