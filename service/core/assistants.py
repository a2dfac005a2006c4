"""Assistants: create, read, list, update and delete (with their threads)."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from service.core import ids
from service.core.clock import now
from service.core.errors import InvalidArgument, NotFound
from service.core.limits import (
    MAX_ASSISTANT_NAME,
    MAX_CONTEXT_WINDOW,
    MAX_INSTRUCTIONS,
    MAX_MODEL,
    MIN_CONTEXT_WINDOW,
)
from service.core.models import Assistant, ContextStrategy, MemoryMode, Page, ToolSpec
from service.core.paging import created, open_cursor
from service.core.ports import AssistantStore, MemoryPort, MessageStore, ThreadStore
from service.core.tools import check_tools
from service.core.validation import (
    check_metadata,
    check_text,
    check_update_mask,
)

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "UPDATABLE_FIELDS",
    "AssistantDraft",
    "Assistants",
    "get_assistant",
]

log = logging.getLogger(__name__)

DEFAULT_INSTRUCTIONS = "You are a helpful assistant."
UPDATABLE_FIELDS = (
    "name",
    "instructions",
    "model",
    "memory_mode",
    "metadata",
    "context_window",
    "context_strategy",
    "tools",
    "memory_from_tool_outputs",
    "shared_memory_writes",
)


@dataclass(slots=True)
class AssistantDraft:
    """Caller-supplied fields of an assistant."""

    name: str = ""
    instructions: str = ""
    model: str = ""
    memory_mode: MemoryMode = MemoryMode.UNSPECIFIED
    metadata: dict[str, str] = field(default_factory=dict)
    context_window: int = 0
    context_strategy: ContextStrategy | None = None
    tools: list[ToolSpec] = field(default_factory=list)
    memory_from_tool_outputs: bool = False
    shared_memory_writes: bool = False


def _check_window(window: int, prefix: str) -> int:
    if window < 0 or window > MAX_CONTEXT_WINDOW:
        raise InvalidArgument(
            f"{prefix}context_window {window:,} is out of range: use 0 (Loom's registry) or "
            f"{MIN_CONTEXT_WINDOW:,} to {MAX_CONTEXT_WINDOW:,} tokens",
            field=prefix + "context_window",
        )
    if 0 < window < MIN_CONTEXT_WINDOW:
        raise InvalidArgument(
            f"{prefix}context_window of {window} tokens is too small to hold a prompt and a "
            f"reply; use at least {MIN_CONTEXT_WINDOW}",
            field=prefix + "context_window",
        )
    return window


def _checked(
    draft: AssistantDraft, fields: Iterable[str] = UPDATABLE_FIELDS, prefix: str = "assistant."
) -> dict[str, object]:
    """The named fields of ``draft``, validated (fields outside an update
    mask are neither read nor checked, as AIP-134 asks)."""
    checks: dict[str, Callable[[], object]] = {
        "name": lambda: check_text(draft.name, prefix + "name", MAX_ASSISTANT_NAME),
        "instructions": lambda: check_text(
            draft.instructions, prefix + "instructions", MAX_INSTRUCTIONS
        ),
        "model": lambda: check_text(draft.model.strip(), prefix + "model", MAX_MODEL),
        "memory_mode": lambda: (
            MemoryMode.OFF if draft.memory_mode is MemoryMode.UNSPECIFIED else draft.memory_mode
        ),
        "metadata": lambda: check_metadata(draft.metadata, prefix + "metadata"),
        "context_window": lambda: _check_window(draft.context_window, prefix),
        "context_strategy": lambda: draft.context_strategy or ContextStrategy.SUMMARIZE,
        "tools": lambda: check_tools(draft.tools, prefix + "tools"),
        "memory_from_tool_outputs": lambda: draft.memory_from_tool_outputs,
        "shared_memory_writes": lambda: draft.shared_memory_writes,
    }
    return {name: checks[name]() for name in fields}


async def get_assistant(store: AssistantStore, tenant: str, assistant_id: str) -> Assistant:
    """The assistant, read from ``store``.

    Raises:
        InvalidArgument: malformed id.
        NotFound: no such assistant for this tenant.
    """
    ids.check_id(ids.ASSISTANT, assistant_id, "assistant_id")
    assistant = await store.get(tenant, assistant_id)
    if assistant is None:
        raise NotFound("assistant", assistant_id)
    return assistant


class Assistants:
    """The assistant use cases; every call is scoped to one tenant. With
    ``memory``, deleting an assistant deletes its memories too."""

    def __init__(
        self,
        assistants: AssistantStore,
        threads: ThreadStore,
        messages: MessageStore,
        *,
        memory: MemoryPort | None = None,
    ) -> None:
        self._assistants = assistants
        self._threads = threads
        self._messages = messages
        self._memory = memory

    async def create(self, tenant: str, draft: AssistantDraft) -> Assistant:
        """Create an assistant.

        Raises:
            InvalidArgument: a field is too long or the metadata is off limits.
        """
        values = _checked(draft)
        t = now()
        assistant = Assistant(
            assistant_id=ids.new_id(ids.ASSISTANT), tenant=tenant, create_time=t, update_time=t
        )
        for name, value in values.items():
            setattr(assistant, name, value)
        await self._assistants.insert(assistant)
        return assistant

    async def get(self, tenant: str, assistant_id: str) -> Assistant:
        """Return the assistant.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such assistant for this tenant.
        """
        return await get_assistant(self._assistants, tenant, assistant_id)

    async def default(self, tenant: str) -> Assistant:
        """The tenant's default assistant, created on first use (and again if
        it was deleted). Concurrent first uses agree on one: each creates a
        candidate, one claim wins, the losers delete theirs."""
        current = await self._assistants.default_id(tenant)
        if current is not None:
            found = await self._assistants.get(tenant, current)
            if found is not None:
                return found
        t = now()
        candidate = Assistant(
            assistant_id=ids.new_id(ids.ASSISTANT),
            tenant=tenant,
            name="Default assistant",
            instructions=DEFAULT_INSTRUCTIONS,
            create_time=t,
            update_time=t,
        )
        await self._assistants.insert(candidate)
        winner = await self._assistants.claim_default(tenant, candidate.assistant_id, current)
        if winner == candidate.assistant_id:
            return candidate
        await self._assistants.delete(tenant, candidate.assistant_id)
        return await self.get(tenant, winner)

    async def list(self, tenant: str, page_size: int, page_token: str) -> Page[Assistant]:
        """One page of assistants, newest first.

        Raises:
            InvalidArgument: negative page size or a bad page token.
        """
        cursor = open_cursor(tenant, page_size, page_token, {"list": "assistants"}, "created")
        items = await self._assistants.find_page(tenant, cursor.fetch, cursor.after)
        return cursor.page(items, lambda a: created(a.create_time, a.assistant_id))

    async def update(
        self, tenant: str, assistant_id: str, draft: AssistantDraft, paths: builtins.list[str]
    ) -> Assistant:
        """Change the fields in ``paths``; ``*`` alone replaces them all
        (``check_update_mask``).

        Raises:
            InvalidArgument: malformed id, a bad mask, or a bad value.
            NotFound: no such assistant.
        """
        ids.check_id(ids.ASSISTANT, assistant_id, "assistant.assistant_id")
        changes = _checked(draft, check_update_mask(paths, UPDATABLE_FIELDS))
        updated = await self._assistants.update(tenant, assistant_id, changes, now())
        if updated is None:
            raise NotFound("assistant", assistant_id)
        return updated

    async def delete(self, tenant: str, assistant_id: str) -> int:
        """Delete the assistant, its threads and their messages; return how
        many threads went with it.

        The assistant is hidden first, then its threads are deleted, then the
        assistant itself: a crash part-way leaves a hidden assistant that
        ``resume_deletes`` finishes at the next start.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such assistant.
        """
        ids.check_id(ids.ASSISTANT, assistant_id, "assistant_id")
        if not await self._assistants.mark_deleting(tenant, assistant_id):
            raise NotFound("assistant", assistant_id)
        return await self._cascade(tenant, assistant_id)

    async def _cascade(self, tenant: str, assistant_id: str) -> int:
        thread_ids = await self._threads.ids_of_assistant(tenant, assistant_id)
        for thread_id in thread_ids:
            await self._threads.mark_deleting(tenant, thread_id)
            await self._messages.delete_thread(tenant, thread_id)
            await self._threads.delete(tenant, thread_id)
        if self._memory is not None:
            await self._memory.forget_assistant(tenant, assistant_id)
        await self._assistants.delete(tenant, assistant_id)
        return len(thread_ids)

    async def resume_deletes(self) -> int:
        """Finish deletions that a crash interrupted; return how many."""
        pending = await self._assistants.pending_deletes()
        for tenant, assistant_id in pending:
            log.info("finishing interrupted deletion of assistant %s", assistant_id)
            await self._cascade(tenant, assistant_id)
        return len(pending)
