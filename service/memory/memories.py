"""The MemoryService use cases: create (one or a batch), get, list,
search, update, delete memories, list a memory's history, and report a
memory operation.

Every call checks its input, then that the assistant is the tenant's.
Changes keep the version they replace (``history.py``); DeleteMemory
deletes a memory and its history for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from service.core import ids
from service.core.assistants import get_assistant
from service.core.clock import now
from service.core.errors import InvalidArgument, NotFound
from service.core.filtering import Filter
from service.core.limits import (
    DEFAULT_SEARCH_LIMIT,
    MAX_MEMORY_BATCH,
    MAX_MEMORY_CHARS,
    MAX_QUERY_CHARS,
    MAX_REQUEST_ID,
    MAX_SEARCH_LIMIT,
    MAX_USER_ID,
)
from service.core.memory_history import MemoryVersion
from service.core.models import Page
from service.core.paging import open_cursor
from service.core.ports import AssistantStore, Job, JobStore, RequestStore
from service.core.validation import check_metadata, check_text, check_update_mask
from service.memory.filters import parse_memory_filter
from service.memory.history import History, next_version
from service.memory.learning import EXTRACTION_JOB
from service.memory.ports import MANUAL, MemoryHit, MemoryIndex, MemoryRecord

__all__ = ["UPDATABLE_FIELDS", "Memories", "MemoryDraft", "MemoryQuery"]

# What UpdateMemory changes; '*' replaces these. Naming invalidate_time on
# its own (unset) restores an invalidated memory: '*' never does.
UPDATABLE_FIELDS = ("content", "metadata")
RESTORE = "invalidate_time"


@dataclass(slots=True)
class MemoryDraft:
    """Caller-supplied fields of a memory; ``invalidated`` says whether the
    caller set an invalidation time (only clearing one is allowed), and
    ``assistant_id`` the assistant a memory of a batch names, if any."""

    content: str = ""
    user_id: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    invalidated: bool = False
    assistant_id: str = ""


@dataclass(frozen=True, slots=True)
class MemoryQuery:
    """Which memories a list or search looks at: a user's scope (None:
    every user, for lists), invalidated ones or not, and a filter (its
    text, as the caller sent it)."""

    user_id: str | None = None
    include_invalidated: bool = False
    filter: str = ""


class Memories:
    """The MemoryService use cases over the index and the history."""

    def __init__(
        self,
        *,
        index: MemoryIndex,
        history: History,
        assistants: AssistantStore,
        job_store: JobStore,
        requests: RequestStore,
    ) -> None:
        self._index = index
        self._history = history
        self._assistants = assistants
        self._job_store = job_store
        self._requests = requests

    async def _assistant(self, tenant: str, assistant_id: str) -> None:
        await get_assistant(self._assistants, tenant, assistant_id)

    def _check_user(self, user_id: str) -> str:
        return check_text(user_id, "user_id", MAX_USER_ID)

    def _new(self, tenant: str, assistant_id: str, draft: MemoryDraft, name: str) -> MemoryRecord:
        """A new manual memory from a checked draft (``name`` names it in errors)."""
        content = check_text(draft.content, f"{name}.content", MAX_MEMORY_CHARS, required=True)
        metadata = check_metadata(draft.metadata, f"{name}.metadata")
        check_text(draft.user_id, f"{name}.user_id", MAX_USER_ID)
        if draft.assistant_id not in ("", assistant_id):
            raise InvalidArgument(
                f"{name}.assistant_id is {draft.assistant_id[:80]!r}, not the request's "
                f"{assistant_id!r}; leave it empty",
                field=f"{name}.assistant_id",
            )
        t = now()
        return MemoryRecord(
            memory_id=ids.new_id(ids.MEMORY),
            tenant=tenant,
            assistant_id=assistant_id,
            user_id=draft.user_id,
            text=content,
            kind=MANUAL,
            create_time=t,
            update_time=t,
            metadata=metadata,
        )

    async def create(self, tenant: str, assistant_id: str, draft: MemoryDraft) -> MemoryRecord:
        """Add a memory explicitly.

        Raises:
            InvalidArgument: blank or long content, bad metadata, malformed id.
            NotFound: no such assistant.
        """
        record = self._new(tenant, assistant_id, draft, "memory")
        await self._assistant(tenant, assistant_id)
        await self._index.upsert([record])
        return record

    async def create_many(
        self,
        tenant: str,
        assistant_id: str,
        drafts: Sequence[MemoryDraft],
        *,
        request_id: str = "",
        sequential: bool = False,
    ) -> list[MemoryRecord]:
        """Add up to ``MAX_MEMORY_BATCH`` memories at once, embedded in one batch,
        all or none. With ``request_id`` their ids derive from it, so a
        repeat finds them and creates nothing (or only what a failed first
        call did not write); the id is claimed with the batch's fingerprint
        before anything is written, so another batch under it is refused
        even while the first is being written. With ``sequential`` each is
        indexed with the two memories before it and the one after it of the
        same user as its context.

        Raises:
            InvalidArgument: no memories, too many, an invalid one (the field
                names its index), a request id used for other memories.
            NotFound: no such assistant.
        """
        if not 1 <= len(drafts) <= MAX_MEMORY_BATCH:
            raise InvalidArgument(
                f"memories holds {len(drafts):,}; send 1 to {MAX_MEMORY_BATCH:,} memories a call",
                field="memories",
            )
        check_text(request_id, "request_id", MAX_REQUEST_ID)
        records = [
            self._new(tenant, assistant_id, d, f"memories[{i}]") for i, d in enumerate(drafts)
        ]
        if request_id:
            records = [
                replace(
                    r,
                    memory_id=ids.derived_id(
                        ids.MEMORY, "batch", tenant, assistant_id, request_id, str(i)
                    ),
                )
                for i, r in enumerate(records)
            ]
        if sequential:
            records = with_neighbours(records)
        await self._assistant(tenant, assistant_id)
        if not request_id:
            await self._index.upsert(records)
            return records
        return await self._claimed(tenant, assistant_id, request_id, records)

    async def _claimed(
        self, tenant: str, assistant_id: str, request_id: str, records: list[MemoryRecord]
    ) -> list[MemoryRecord]:
        """Write a batch under its request id, claimed first with the
        batch's fingerprint: the first call writes, a repeat of it writes
        what the first did not, other memories under the id are refused."""
        claim = f"memories/{assistant_id}/{request_id}"
        fingerprint = _fingerprint(records)
        earlier = await self._requests.claim(tenant, claim, fingerprint, now())
        if earlier is None:  # the first call with this id: a failure frees it
            try:
                return await self._replayed(tenant, assistant_id, request_id, records)
            except Exception:
                await self._requests.release(tenant, claim)
                raise
        if earlier.fingerprint != fingerprint:
            # Refused before anything is written: two calls at once with one
            # id and different memories would otherwise both be acknowledged.
            raise _reused(request_id)
        return await self._replayed(tenant, assistant_id, request_id, records)

    async def _replayed(
        self, tenant: str, assistant_id: str, request_id: str, records: list[MemoryRecord]
    ) -> list[MemoryRecord]:
        """Write what an earlier call with this batch's request id did not
        (batches from before request ids were claimed are checked here too)."""
        found = await self._index.get_many(tenant, assistant_id, [r.memory_id for r in records])
        if any(r.memory_id in found and not _same(found[r.memory_id], r) for r in records):
            raise _reused(request_id)
        await self._index.upsert([r for r in records if r.memory_id not in found])
        return [found.get(r.memory_id, r) for r in records]

    async def get(self, tenant: str, assistant_id: str, memory_id: str) -> MemoryRecord:
        """Return one memory, invalidated or not.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such assistant or memory.
        """
        ids.check_id(ids.MEMORY, memory_id, "memory_id")
        await self._assistant(tenant, assistant_id)
        record = await self._index.get(tenant, assistant_id, memory_id)
        if record is None:
            raise NotFound("memory", memory_id)
        return record

    async def list_page(
        self,
        tenant: str,
        assistant_id: str,
        query: MemoryQuery,
        assistant_wide_only: bool,
        page_size: int,
        page_token: str,
    ) -> Page[MemoryRecord]:
        """One page of an assistant's memories, oldest first.

        Raises:
            InvalidArgument: conflicting or malformed filters, bad page size
                or token.
            NotFound: no such assistant.
        """
        user_id = query.user_id or ""
        self._check_user(user_id)
        if user_id and assistant_wide_only:
            raise InvalidArgument(
                "user_id and assistant_wide_only cannot be combined", field="assistant_wide_only"
            )
        matching = parse_memory_filter(query.filter)
        filters: dict[str, object] = {
            "list": "memories",
            "a": assistant_id,
            "u": user_id,
            "w": assistant_wide_only,
            "i": query.include_invalidated,
            "f": matching.canonical(),
        }
        cursor = open_cursor(tenant, page_size, page_token, filters, "position")
        await self._assistant(tenant, assistant_id)
        # The index pages by offset: the key a page resumes after is the
        # number of items before it.
        offset = cursor.after or 0
        scope: str | None = "" if assistant_wide_only else (user_id or None)
        items = await self._index.list_records(
            tenant,
            assistant_id,
            scope,
            cursor.fetch,
            offset,
            include_invalidated=query.include_invalidated,
            matching=matching,
        )
        return cursor.page(items, lambda _: offset + cursor.limit)

    async def search(
        self,
        tenant: str,
        assistant_id: str,
        text: str,
        query: MemoryQuery,
        limit: int,
        min_score: float,
    ) -> list[MemoryHit]:
        """Rank the scope's memories (those matching the query's filter)
        against ``text``.

        Raises:
            InvalidArgument: blank or long query, bad limit or filter,
                ``min_score`` not a number from 0 to 1.
            NotFound: no such assistant.
        """
        check_text(text, "query", MAX_QUERY_CHARS, required=True)
        user_id = query.user_id or ""
        self._check_user(user_id)
        if limit < 0:
            raise InvalidArgument("limit must not be negative", field="limit")
        # NaN fails both comparisons, so it is refused with the infinities.
        if not 0.0 <= min_score <= 1.0:
            raise InvalidArgument(
                f"min_score {min_score} is out of range: scores run from 0 to 1, so use a "
                "number in [0, 1] (0, the default, keeps every match)",
                field="min_score",
            )
        matching: Filter = parse_memory_filter(query.filter)
        ids.check_id(ids.ASSISTANT, assistant_id, "assistant_id")
        # The search (its query's embedding above all) runs while the
        # assistant is read, and answers only once that says it is the
        # tenant's: a read of the database less on the way.
        searching = asyncio.ensure_future(
            self._index.search(
                tenant,
                assistant_id,
                text,
                user_id=user_id,
                limit=min(limit or DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT),
                min_score=min_score,
                include_invalidated=query.include_invalidated,
                matching=matching,
            )
        )
        try:
            await self._assistant(tenant, assistant_id)
        except BaseException:
            searching.cancel()
            await asyncio.gather(searching, return_exceptions=True)
            raise
        return await searching

    async def update(
        self,
        tenant: str,
        assistant_id: str,
        memory_id: str,
        draft: MemoryDraft,
        paths: Sequence[str],
    ) -> MemoryRecord:
        """Change a memory's content and/or metadata (``*`` alone replaces
        both, ``check_update_mask``), or restore it (``invalidate_time``
        named, and left unset); the previous version is kept in its history.

        Raises:
            InvalidArgument: a bad mask, bad values, an invalidation time set,
                a user_id other than the memory's (a memory keeps its user).
            NotFound: no such assistant or memory.
        """
        names_user = "user_id" in paths  # immutable (AIP-203): checked below
        rest = [p for p in paths if p != "user_id"]
        allowed = UPDATABLE_FIELDS if "*" in rest else (*UPDATABLE_FIELDS, RESTORE)
        wanted = check_update_mask(rest, allowed) if rest or not names_user else []
        existing = await self.get(tenant, assistant_id, memory_id)
        if names_user and draft.user_id != existing.user_id:
            raise InvalidArgument(
                "memory.user_id cannot be changed: a memory keeps the user it was created for "
                "(create the memory for the other user and delete this one)",
                field="memory.user_id",
            )
        if not wanted:
            raise InvalidArgument(
                "update_mask path 'user_id' cannot be updated (a memory keeps its user); "
                f"name fields from {', '.join((*UPDATABLE_FIELDS, RESTORE))}",
                field="update_mask",
            )
        changes: dict[str, Any] = {}
        if "content" in wanted:
            changes["text"] = check_text(
                draft.content, "memory.content", MAX_MEMORY_CHARS, required=True
            )
        if "metadata" in wanted:
            changes["metadata"] = check_metadata(draft.metadata, "memory.metadata")
        change = "updated"
        if RESTORE in wanted:
            if draft.invalidated:
                raise InvalidArgument(
                    "memories are invalidated by fact extraction only; to restore an "
                    "invalidated memory, name invalidate_time in update_mask and leave "
                    "memory.invalidate_time unset",
                    field="memory.invalidate_time",
                )
            if existing.invalidate_time is not None:
                changes.update(invalidate_time=None, superseded_by="")
                change = "restored"
        if all(getattr(existing, key) == value for key, value in changes.items()):
            return existing  # nothing changes: no new version
        record = next_version(existing, change, now(), **changes)
        await self._history.change([(existing, record)])
        return record

    async def delete(self, tenant: str, assistant_id: str, memory_id: str) -> None:
        """Delete a memory and its history for good.

        Raises:
            InvalidArgument: malformed ids.
            NotFound: no such assistant or memory.
        """
        await self.get(tenant, assistant_id, memory_id)
        await self._history.forget(tenant, assistant_id, [memory_id])

    async def history(
        self, tenant: str, assistant_id: str, memory_id: str, page_size: int, page_token: str
    ) -> Page[MemoryVersion]:
        """One page of a memory's versions, oldest first (the current one last).

        Raises:
            InvalidArgument: malformed ids, bad page size or token.
            NotFound: no such assistant or memory.
        """
        filters: dict[str, object] = {"list": "history", "a": assistant_id, "m": memory_id}
        cursor = open_cursor(tenant, page_size, page_token, filters, "position")
        record = await self.get(tenant, assistant_id, memory_id)
        versions = await self._history.versions(record)
        offset = cursor.after or 0  # the number of versions before the page
        return cursor.page(
            versions[offset : offset + cursor.fetch], lambda _: offset + cursor.limit
        )

    async def operation(self, tenant: str, operation_id: str) -> Job:
        """Return a memory operation.

        Raises:
            InvalidArgument: malformed id.
            NotFound: no such operation for this tenant.
        """
        ids.check_id(ids.OPERATION, operation_id, "operation_id")
        job = await self._job_store.get(tenant, operation_id)
        if job is None or job.kind != EXTRACTION_JOB:
            raise NotFound("operation", operation_id)
        return job


def with_neighbours(records: list[MemoryRecord]) -> list[MemoryRecord]:
    """The records of a sequence, each with the texts of the two before it
    and the one after it of the same user as its context."""
    by_user: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        by_user.setdefault(record.user_id, []).append(i)
    out = list(records)
    for order in by_user.values():
        for at, i in enumerate(order):
            around = order[max(0, at - 2) : at] + order[at + 1 : at + 2]
            out[i] = replace(records[i], context="\n".join(records[j].text for j in around))
    return out


def _reused(request_id: str) -> InvalidArgument:
    return InvalidArgument(
        f"request_id {request_id!r} was already used for other memories; use a new "
        "request_id for a new batch",
        field="request_id",
        reason="REQUEST_ID_REUSED",
    )


def _fingerprint(records: Sequence[MemoryRecord]) -> str:
    """What a batch asks for, as ``_same`` compares it, hashed."""
    wanted = [(r.user_id, r.text, sorted(r.metadata.items()), r.context) for r in records]
    return hashlib.sha256(json.dumps(wanted).encode()).hexdigest()


def _same(stored: MemoryRecord, wanted: MemoryRecord) -> bool:
    """Whether a stored memory is the one a repeated batch asks for."""
    return (stored.user_id, stored.text, stored.metadata, stored.context) == (
        wanted.user_id,
        wanted.text,
        wanted.metadata,
        wanted.context,
    )
