"""A span per Chroma call, without touching the memory index: thin proxies
around the chromadb client and its collections.

The index runs every chromadb call in a worker thread with
``asyncio.to_thread``, which copies the caller's context, so each span is a
child of the span that asked (memory recall, an extraction job, ...). Spans
are CLIENT spans named ``chroma {operation}`` with the database conventions'
``db.system.name`` ``chroma``, ``db.operation.name``, ``db.collection.name``
(a collection per assistant, so it is an attribute, not in the name),
``db.operation.batch.size`` for writes, ``db.response.returned_rows`` for
reads, and ``server.address``/``server.port`` for a Chroma server. A lookup
of a collection that does not exist yet (the index's normal first use) is
``db.response.status_code`` ``not_found``, not an error. Documents,
embeddings and filters are never recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from service.telemetry.spans import record_error, tracer

__all__ = ["TracedChromaClient", "TracedCollection"]

_tracer = tracer("loom.chroma")

_CLIENT_CALLS = frozenset(
    {
        "get_collection",
        "get_or_create_collection",
        "create_collection",
        "delete_collection",
        "list_collections",
        "count_collections",
    }
)
_COLLECTION_CALLS = frozenset(
    {"add", "upsert", "update", "get", "query", "delete", "count", "modify", "peek"}
)
_WRITES = frozenset({"add", "upsert", "update", "delete"})


def _batch(kwargs: dict[str, Any], args: tuple[Any, ...]) -> int | None:
    ids = kwargs.get("ids", args[0] if args else None)
    if isinstance(ids, str):
        return 1
    return len(ids) if isinstance(ids, list | tuple) else None


def _returned(result: Any) -> int | None:
    ids = result.get("ids") if isinstance(result, dict) else None
    if not isinstance(ids, list):
        return None
    return sum(len(i) for i in ids) if ids and isinstance(ids[0], list) else len(ids)


def _traced_call(
    operation: str,
    fn: Callable[..., Any],
    base: dict[str, AttributeValue],
    wrap: Callable[[Any], Any] | None,
) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        attributes = dict(base)
        attributes["db.operation.name"] = operation
        if operation in _WRITES and (size := _batch(kwargs, args)) is not None:
            attributes["db.operation.batch.size"] = size
        if "db.collection.name" not in attributes and operation.endswith("_collection"):
            name = kwargs.get("name", args[0] if args else None)
            if isinstance(name, str):
                attributes["db.collection.name"] = name
        with _tracer.start_as_current_span(
            f"chroma {operation}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                if type(exc).__name__ == "NotFoundError":  # a lookup's normal "no such collection"
                    span.set_attribute("db.response.status_code", "not_found")
                else:
                    record_error(span, exc)
                raise
            if span.is_recording() and (rows := _returned(result)) is not None:
                span.set_attribute("db.response.returned_rows", rows)
        return wrap(result) if wrap else result

    return call


class TracedCollection:
    """A chromadb collection whose data calls are traced; everything else
    (``name``, ``metadata``, ...) is the collection's own."""

    def __init__(self, collection: Any, base: dict[str, AttributeValue]) -> None:
        self._collection = collection
        self._base = {**base, "db.collection.name": str(getattr(collection, "name", ""))}

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._collection, name)
        if name in _COLLECTION_CALLS and callable(value):
            return _traced_call(name, value, self._base, None)
        return value

    def __repr__(self) -> str:
        return f"TracedCollection({self._collection!r})"


class TracedChromaClient:
    """A chromadb client (embedded or HTTP) whose collection lookups are
    traced and whose collections come back as ``TracedCollection``."""

    def __init__(self, client: Any, server: tuple[str, int] | None = None) -> None:
        self._client = client
        self._base: dict[str, AttributeValue] = {"db.system.name": "chroma", "db.system": "chroma"}
        if server is not None:
            self._base["server.address"] = server[0]
            self._base["server.port"] = server[1]

    def _wrap(self, result: Any) -> Any:
        if isinstance(result, list):
            return [self._wrap(item) for item in result]
        if hasattr(result, "query") and hasattr(result, "upsert"):
            return TracedCollection(result, self._base)
        return result

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if name in _CLIENT_CALLS and callable(value):
            return _traced_call(name, value, self._base, self._wrap)
        return value

    def __repr__(self) -> str:
        return f"TracedChromaClient({self._client!r})"
