"""Per-assistant memory write counters, shared by every replica, exact on
MongoDB and on FerretDB 1.24 alike.

Why not ``$inc``. A search compares the counter with the one its cache was
built at, so a write must move it past every value any replica has read
before the write landed. On MongoDB ``$inc`` does. FerretDB 1.24 runs
every update (``findAndModify``, ``update``, a conditional ``$set`` too) as
a read followed by a write by ``_id``: 200 ``$inc`` from 8 threads over two
clients left the counter at 41-58 on PostgreSQL and 27-32 on SQLite, and a
compare-and-swap loop let 147 of 200 swaps "win" twice. A unique ``_id``
is the one thing it enforces exactly (PostgreSQL's and SQLite's own
constraint), so a write claims the next number by inserting it:

- ``memory_version_claims``: one document per write, ``_id`` =
  ``key/n``. Claiming ``n`` inserts ``key/n``; a duplicate key means another
  writer has it, so the writer moves on. A number is only tried after the
  one before it was seen claimed, so claims are dense (1..max, no gaps) and
  the counter is their largest number.
- ``memory_versions``: ``{_id: key, version}``, a hint of the largest
  claim, raised after each claim (``$max``; on FerretDB a lost raise leaves
  it lower, never higher). Reading the counter reads the hint, then looks
  up ``key/(hint+1)``, ``key/(hint+2)``... until one is missing: by ``_id``
  alone, which FerretDB pushes down (it pushes no other filter).

So a search reads two documents (the hint and one missing claim) and a
write reads the hint, inserts its claim and raises the hint. The claims are kept (about 100 bytes a
write; dropping old ones would reopen numbers a late writer could claim).
Counters stored before claims existed carry on from their stored value.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.store.scoped import key

__all__ = ["MongoMemoryVersions"]

Doc = dict[str, Any]


def _claim(counter: str, n: int) -> str:
    return f"{counter}/{n}"


class MongoMemoryVersions:
    """``service.memory.ports.VersionSource`` over a hint collection and a
    claims collection; see the module docstring."""

    def __init__(self, hints: AsyncCollection[Doc], claims: AsyncCollection[Doc]) -> None:
        self._hints = hints
        self._claims = claims

    async def current(self, tenant: str, assistant_id: str) -> int:
        counter = key(tenant, assistant_id)
        return await self._last_claimed(counter, await self._hint(counter))

    async def _hint(self, counter: str) -> int:
        doc = await self._hints.find_one({"_id": counter})
        return int(doc["version"]) if doc else 0

    async def _last_claimed(self, counter: str, n: int) -> int:
        """The largest claim, looking up from ``n`` (claimed, or the start)."""
        while await self._claims.find_one({"_id": _claim(counter, n + 1)}, {"_id": 1}):
            n += 1
        return n

    async def bump(self, tenant: str, assistant_id: str) -> int:
        counter = key(tenant, assistant_id)
        # From the hint: it is the counter but while another write is between
        # its claim and its hint, and a duplicate key then says so.
        n = await self._hint(counter) + 1
        while True:
            try:
                await self._claims.insert_one({"_id": _claim(counter, n)})
                break
            except DuplicateKeyError:
                n = await self._last_claimed(counter, n) + 1
        try:
            await self._hints.update_one({"_id": counter}, {"$max": {"version": n}}, upsert=True)
        except DuplicateKeyError:  # another writer's upsert made the hint first
            await self._hints.update_one({"_id": counter}, {"$max": {"version": n}})
        return n
