"""Writes fenced on a lease epoch: refused once a holder with a larger epoch
has written the document (see ``service.core.ports.ThreadClaim``).

On MongoDB the check is in the update's own filter (``_id`` and ``fence``
not greater than the epoch), so the write is exact: one document, one
atomic operation. FerretDB 1.x runs every update as a query followed by a
write by ``_id`` (``msg_update.go``), and pushes no filter down to SQLite
but ``_id`` alone, so the same filter would scan the whole collection for
each write; there the store reads the document's fence by ``_id`` and
writes by ``_id``, which is what FerretDB itself would do, minus the scan.
``Fences.detect`` tells the two apart at start (``buildInfo`` names
FerretDB); until then the conditional filter is used, correct on both.
"""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

__all__ = ["Fences"]

Doc = dict[str, Any]


def _fenced(doc_id: str, epoch: int) -> Doc:
    # A document never fenced (written before fencing existed) matches.
    return {"_id": doc_id, "fence": {"$not": {"$gt": epoch}}}


class Fences:
    """Fenced updates for every repository of one database."""

    def __init__(self) -> None:
        self.in_filter = True  # False on FerretDB: read the fence, then write by _id

    async def detect(self, db: AsyncDatabase[Doc]) -> None:
        """Choose how to fence from what the server says it is."""
        info = await db.command("buildInfo")
        self.in_filter = "ferretdbVersion" not in info

    async def _allowed(self, c: AsyncCollection[Doc], doc_id: str, epoch: int) -> bool:
        doc = await c.find_one({"_id": doc_id}, {"fence": 1})
        return doc is not None and int(doc.get("fence", 0)) <= epoch

    async def update(
        self,
        c: AsyncCollection[Doc],
        doc_id: str,
        epoch: int,
        changes: Doc,
        *,
        inc: Doc | None = None,
    ) -> bool:
        """``$set`` ``changes`` and the fence (and ``$inc`` ``inc``); False if
        refused or gone."""
        update: Doc = {"$set": {**changes, "fence": epoch}}
        if inc:
            update["$inc"] = inc
        if self.in_filter:
            return (await c.update_one(_fenced(doc_id, epoch), update)).matched_count == 1
        if not await self._allowed(c, doc_id, epoch):
            return False
        return (await c.update_one({"_id": doc_id}, update)).matched_count == 1

    async def find_and_update(
        self,
        c: AsyncCollection[Doc],
        doc_id: str,
        epoch: int,
        changes: Doc,
        *,
        after: bool,
    ) -> Doc | None:
        """As ``update``, returning the document as it is afterwards (or was
        before, without ``after``); None if refused or gone."""
        update = {"$set": {**changes, "fence": epoch}}
        returned = ReturnDocument.AFTER if after else ReturnDocument.BEFORE
        if self.in_filter:
            return await c.find_one_and_update(
                _fenced(doc_id, epoch), update, return_document=returned
            )
        if not await self._allowed(c, doc_id, epoch):
            return None
        return await c.find_one_and_update({"_id": doc_id}, update, return_document=returned)
