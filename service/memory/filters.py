"""The filter of ListMemories and SearchMemories: which fields it takes
(``FIELDS``, in the AIP-160 subset of ``core/filtering.py``) and how a
memory's Chroma metadata is matched against it.

    kind = FACT AND metadata.source = "crm" AND create_time >= "2026-01-01T00:00:00Z"

``kind`` (EPISODIC, FACT, MANUAL, or the enum's full names) and
``metadata.KEY`` take ``=`` and ``!=``; ``create_time`` and ``update_time``
take every comparison. A memory without the metadata key matches only
``!=``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from service.core.filtering import ORDERED, FieldSpec, Filter, compare, parse_filter
from service.memory._codec import updated_us

__all__ = ["FIELDS", "filter_keys", "matches", "parse_memory_filter"]

FIELDS: dict[str, FieldSpec] = {
    "kind": FieldSpec(
        "enum",
        values={
            "episodic": ("EPISODIC", "MEMORY_KIND_EPISODIC"),
            "fact": ("FACT", "MEMORY_KIND_FACT"),
            "manual": ("MANUAL", "MEMORY_KIND_MANUAL"),
        },
    ),
    "metadata": FieldSpec("string", map=True),
    "create_time": FieldSpec("timestamp", ORDERED),
    "update_time": FieldSpec("timestamp", ORDERED),
}
EXAMPLE = 'kind = FACT AND metadata.source = "crm"'


def parse_memory_filter(text: str) -> Filter:
    """The parsed ``filter`` of a memory request.

    Raises:
        InvalidArgument: not in the accepted subset (the message says where).
    """
    return parse_filter(text, FIELDS, example=EXAMPLE)


def filter_keys(meta: Mapping[str, object]) -> dict[str, object]:
    """The part of a record's Chroma metadata a filter can look at (what
    the search caches keep of each memory)."""
    return {
        k: v
        for k, v in meta.items()
        if k in ("kind", "create_us", "update_us") or k.startswith("m.")
    }


def matches(where: Filter | None, meta: Mapping[str, object]) -> bool:
    """Whether a record's Chroma metadata satisfies every comparison."""
    if not where:
        return True
    for c in where.comparisons:
        if c.field == "kind":
            left: object = meta.get("kind")
        elif c.field == "metadata":
            left = meta.get("m." + c.key)
            left = None if left is None else str(left)
        else:
            micros = meta.get("create_us") if c.field == "create_time" else updated_us(meta)
            left = (
                datetime.fromtimestamp(micros / 1_000_000, tz=UTC)
                if isinstance(micros, int | float)
                else None
            )
        if not compare(c.op, left, c.value):
            return False
    return True
