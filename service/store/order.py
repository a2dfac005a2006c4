"""Lists newest first: the sort, and the filter that resumes after the last
item of a page (keyset paging on creation time, then ``_id``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING

__all__ = ["NEWEST_FIRST", "older_than"]

# Ids are random: creation time orders, the id only breaks ties (BSON dates
# keep milliseconds, so two objects can share one).
NEWEST_FIRST = [("create_time", DESCENDING), ("_id", DESCENDING)]


def older_than(after: tuple[datetime, str] | None, stored_id: str) -> dict[str, Any]:
    """The filter for items after ``after`` in ``NEWEST_FIRST`` order;
    ``stored_id`` is that last item's ``_id`` as stored."""
    if after is None:
        return {}
    moment = after[0]
    return {
        "$or": [
            {"create_time": {"$lt": moment}},
            {"create_time": moment, "_id": {"$lt": stored_id}},
        ]
    }
