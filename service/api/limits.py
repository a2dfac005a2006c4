"""The interceptor that applies the call limits (``service.core.limits``) to
every authenticated RPC: a token per call from the API key's bucket, and a
tenant stream slot held by each SendMessage and SubmitToolOutputs stream.

It goes after ``LoomInterceptor`` in the chain: that one authenticates the
caller (``current_caller``) and turns the limiter's errors into
RESOURCE_EXHAUSTED with ErrorInfo and RetryInfo. Health and reflection are
never limited.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from service.api.context import current_caller
from service.api.handlers import rewrap
from service.core.ratelimit import Limiter

__all__ = ["REPLY_STREAMS", "LimitsInterceptor"]

# The streams that hold a model call open: the ones a tenant's cap counts.
REPLY_STREAMS = frozenset(
    {"/loom.v1.ThreadService/SendMessage", "/loom.v1.ThreadService/SubmitToolOutputs"}
)


class LimitsInterceptor(aio.ServerInterceptor):
    """Rate-limits calls per API key and caps reply streams per tenant."""

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method
        capped = method in REPLY_STREAMS
        return rewrap(
            await continuation(handler_call_details),
            method,
            unary=self._unary,
            stream=lambda behavior: self._stream(behavior, capped=capped),
        )

    def _unary(self, behavior: Any) -> Any:
        limiter = self._limiter

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            caller = current_caller.get()
            limiter.admit(caller.key_id, caller.limits)
            return await behavior(request, context)

        return unary

    def _stream(self, behavior: Any, *, capped: bool) -> Any:
        limiter = self._limiter

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            caller = current_caller.get()
            limiter.admit(caller.key_id, caller.limits)
            slot = (
                limiter.stream(caller.tenant, caller.limits) if capped else contextlib.nullcontext()
            )
            with slot:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response

        return stream
