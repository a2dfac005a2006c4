"""API keys collection (SHA-256 digests, never the keys themselves) and the
tenants collection (each tenant's overrides of the call limits)."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.ports import ApiKey, TenantLimits

__all__ = ["MongoApiKeyStore"]

Doc = dict[str, Any]


def _from_doc(d: Doc) -> ApiKey:
    return ApiKey(
        key_id=d["_id"],
        tenant=d["tenant"],
        prefix=d.get("prefix", ""),
        create_time=d["create_time"],
        revoke_time=d.get("revoke_time"),
    )


class MongoApiKeyStore:
    """``ApiKeyStore`` over a keys collection and a tenants collection."""

    def __init__(self, collection: AsyncCollection[Doc], tenants: AsyncCollection[Doc]) -> None:
        self._c = collection
        self._tenants = tenants

    def _doc(self, key: ApiKey, digest: str) -> Doc:
        return {
            "_id": key.key_id,
            "tenant": key.tenant,
            "prefix": key.prefix,
            "digest": digest,
            "create_time": key.create_time,
            "revoke_time": key.revoke_time,
        }

    async def insert(self, key: ApiKey, digest: str) -> None:
        await self._c.insert_one(self._doc(key, digest))

    async def upsert(self, key: ApiKey, digest: str) -> None:
        doc = self._doc(key, digest)
        doc.pop("_id")
        # Replicas starting together each upsert the dev key; FerretDB 1.x runs
        # an upsert as a read then an insert, so the losers of that race get
        # the winner's duplicate key. The key is there either way.
        with contextlib.suppress(DuplicateKeyError):
            await self._c.update_one({"_id": key.key_id}, {"$setOnInsert": doc}, upsert=True)

    async def find(self, digest: str) -> tuple[ApiKey, str] | None:
        doc = await self._c.find_one({"digest": digest})
        return (_from_doc(doc), str(doc["digest"])) if doc else None

    async def list_keys(self, tenant: str | None) -> list[ApiKey]:
        query: Doc = {"tenant": tenant} if tenant else {}
        cursor = self._c.find(query).sort("create_time", ASCENDING)
        return [_from_doc(d) async for d in cursor]

    async def revoke(self, key_id: str, now: datetime) -> bool:
        result = await self._c.update_one(
            {"_id": key_id, "revoke_time": None}, {"$set": {"revoke_time": now}}
        )
        return result.modified_count == 1

    async def limits(self, tenant: str) -> TenantLimits:
        doc = await self._tenants.find_one({"_id": tenant})
        limits: Doc = (doc or {}).get("limits") or {}
        return TenantLimits(
            rate=limits.get("rate"), burst=limits.get("burst"), streams=limits.get("streams")
        )

    async def set_limits(self, tenant: str, limits: TenantLimits) -> None:
        values = {
            "rate": limits.rate,
            "burst": limits.burst,
            "streams": limits.streams,
        }
        await self._tenants.update_one(
            {"_id": tenant},
            {"$set": {"limits": {k: v for k, v in values.items() if v is not None}}},
            upsert=True,
        )
