"""Wrapping a gRPC method handler in an interceptor's own behaviour: the
one place that knows which handler kinds Loom serves and which methods no
interceptor of Loom's touches (health and reflection)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

__all__ = ["OPEN_PREFIXES", "Behavior", "rewrap"]

# Health and reflection answer without a key, unlimited.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

Behavior = Any  # a handler's unary or unary-stream function, as grpc types it
Deserializer = Callable[[bytes], Any] | None


def rewrap(
    handler: grpc.RpcMethodHandler[Any, Any] | None,
    method: str,
    *,
    unary: Callable[[Behavior], Behavior],
    stream: Callable[[Behavior], Behavior],
    parse: Callable[[Deserializer], Deserializer] | None = None,
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """``handler`` with its behaviour passed through ``unary`` or ``stream``
    (and its request deserializer through ``parse``, if given); unchanged
    for health, reflection, an unknown method (None) and client-streaming
    handlers, which Loom does not have."""
    if handler is None or method.startswith(OPEN_PREFIXES):
        return handler
    deserializer = handler.request_deserializer
    if parse is not None:
        deserializer = parse(deserializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            unary(handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream(handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler
