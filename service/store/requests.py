"""Idempotency records for SendMessage ``request_id`` (AIP-155)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from service.core.ports import RequestRecord
from service.store.scoped import key

__all__ = ["MongoRequestStore"]

Doc = dict[str, Any]


def _from_doc(d: Doc) -> RequestRecord:
    return RequestRecord(
        fingerprint=d["fingerprint"],
        create_time=d["create_time"],
        thread_id=d.get("thread_id", ""),
        thread_created=bool(d.get("thread_created", False)),
        assistant_id=d.get("assistant_id", ""),
        user_message_id=d.get("user_message_id", ""),
        assistant_message_id=d.get("assistant_message_id", ""),
        model=d.get("model", ""),
    )


class MongoRequestStore:
    """``RequestStore``: one document per (tenant, request_id), keyed by ``_id``
    so that the claim is a single insert that only one caller can win."""

    def __init__(self, collection: AsyncCollection[Doc]) -> None:
        self._c = collection

    async def claim(
        self, tenant: str, request_id: str, fingerprint: str, now: datetime
    ) -> RequestRecord | None:
        try:
            await self._c.insert_one(
                {
                    "_id": key(tenant, request_id),
                    "tenant": tenant,
                    "fingerprint": fingerprint,
                    "create_time": now,
                }
            )
        except DuplicateKeyError:
            doc = await self._c.find_one({"_id": key(tenant, request_id)})
            if doc is not None:
                return _from_doc(doc)
            return await self.claim(tenant, request_id, fingerprint, now)
        return None

    async def take_over(self, tenant: str, request_id: str, stale: datetime, now: datetime) -> bool:
        result = await self._c.update_one(
            {
                "_id": key(tenant, request_id),
                "create_time": stale,
                "assistant_message_id": {"$exists": False},
            },
            {"$set": {"create_time": now}},
        )
        return result.modified_count == 1

    async def bind(self, tenant: str, request_id: str, record: RequestRecord) -> None:
        await self._c.update_one(
            {"_id": key(tenant, request_id)},
            {
                "$set": {
                    "thread_id": record.thread_id,
                    "thread_created": record.thread_created,
                    "assistant_id": record.assistant_id,
                    "user_message_id": record.user_message_id,
                    "assistant_message_id": record.assistant_message_id,
                    "model": record.model,
                }
            },
        )

    async def release(self, tenant: str, request_id: str) -> None:
        await self._c.delete_one(
            {"_id": key(tenant, request_id), "assistant_message_id": {"$exists": False}}
        )
