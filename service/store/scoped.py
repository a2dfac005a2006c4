"""Keys scoped by tenant: the ``_id`` of a tenant's document is the tenant
and the object's id, so every read by id names its tenant.

Why: a read by ``_id`` alone that checks the tenant in code finds another
tenant's document and reads it whole (a 450,000-character thread took
14 ms to refuse, a missing one 4 ms: the time said it existed, and its
size). A filter on ``_id`` and ``tenant`` would not help on FerretDB 1.x,
which pushes down to SQLite only a filter that is a lone ``_id`` (anything
else scans the collection), nor would a projection (FerretDB reads and
parses the whole document first). With the tenant in the key, another
tenant's object is a primary-key miss like a missing one, on MongoDB and
FerretDB alike.
"""

from __future__ import annotations

__all__ = ["SEPARATOR", "key", "object_id"]

SEPARATOR = "\x1f"  # in no id (core/ids.py) and no tenant name (core/keys.py)


def key(tenant: str, object_id: str) -> str:
    """The ``_id`` of ``tenant``'s object ``object_id``."""
    return f"{tenant}{SEPARATOR}{object_id}"


def object_id(stored: str) -> str:
    """The object id in a stored ``_id``."""
    return stored.rpartition(SEPARATOR)[2]
