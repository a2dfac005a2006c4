"""MongoDB repositories (PyMongo's async API) implementing ``service.core.ports``.

Only features that both MongoDB and FerretDB 1.x implement are used: no
multi-document transactions, TTL or partial indexes. Atomicity comes from
single-document conditional updates and unique indexes.
"""

from service.store.mongo import MongoStore, connect

__all__ = ["MongoStore", "connect"]
