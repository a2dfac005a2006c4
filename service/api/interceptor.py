"""One interceptor for every Loom RPC: API-key authentication, the tenant
context, and domain errors to gRPC statuses.

It wraps each handler rather than only checking metadata, so that the tenant
context variable is set in the task that runs the handler, and so that every
error from every handler goes through ``classify`` (never UNKNOWN, never a
stack trace to the caller). A request that does not parse (a string that is
not UTF-8, say) would fail in gRPC's own deserializer as UNKNOWN; the
wrapped deserializer hands it on as ``_Undecodable`` instead, refused as
INVALID_ARGUMENT once the caller is authenticated.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from service.api.context import current_caller, current_tenant
from service.api.errors import Translator, caller_message, classify, status_details
from service.api.handlers import rewrap
from service.core.errors import InvalidArgument
from service.core.keys import Caller
from service.telemetry import annotate, record_reason

__all__ = ["LoomInterceptor"]

log = logging.getLogger(__name__)

API_KEY_HEADER = "x-api-key"
# Codes the RPC semantic conventions count as server errors on a server span.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

Authenticate = Callable[[str | None], Awaitable[Caller]]


class _Undecodable:
    """A request body that is not a valid message of the method's type."""

    def __init__(self, why: str) -> None:
        self.why = why


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(body: bytes) -> Any:
        try:
            return deserialize(body)
        except DecodeError as exc:
            return _Undecodable(str(exc))

    return parse


def _checked(request: Any) -> Any:
    """``request``, unless it did not parse.

    Raises:
        InvalidArgument: saying why it did not parse.
    """
    if isinstance(request, _Undecodable):
        raise InvalidArgument(
            f"the request does not parse as this method's request message ({request.why[:200]}); "
            "send it as the contract's generated code does, with every string in UTF-8"
        )
    return request


def _api_key(context: aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == API_KEY_HEADER:
            return value if isinstance(value, str) else value.decode()
    return None


def _enter(caller: Caller) -> None:
    current_caller.set(caller)
    current_tenant.set(caller.tenant)


async def _abort(
    context: aio.ServicerContext[Any, Any], exc: BaseException, translators: Sequence[Translator]
) -> None:
    code, error = classify(exc, translators)
    # The RPC's span (when traced) gets the reason, and error.type for the
    # codes that are server errors; the tracing interceptor records the
    # status code from the abort below.
    annotate(error_reason=error.reason)
    record_reason(error.reason)
    if code in _SERVER_ERRORS:
        annotate({"error.type": code.name})
    if code is grpc.StatusCode.INTERNAL:  # the detail is in the log, with the trace id
        annotate(exception_type=type(exc).__qualname__)
    await context.abort(
        code,
        caller_message(error),
        trailing_metadata=(("grpc-status-details-bin", status_details(code, error)),),
    )


class LoomInterceptor(aio.ServerInterceptor):
    """Authenticates every RPC but health and reflection, and maps errors
    (adapter exceptions through ``translators`` first)."""

    def __init__(self, authenticate: Authenticate, translators: Sequence[Translator] = ()) -> None:
        self._authenticate = authenticate
        self._translators = tuple(translators)

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return rewrap(
            await continuation(handler_call_details),
            handler_call_details.method,
            unary=self._unary,
            stream=self._stream,
            parse=_lenient,
        )

    def _unary(self, behavior: Any) -> Any:
        authenticate, translators = self._authenticate, self._translators

        async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
            try:
                _enter(await authenticate(_api_key(context)))
                return await behavior(_checked(request), context)
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await _abort(context, exc, translators)

        return unary

    def _stream(self, behavior: Any) -> Any:
        authenticate, translators = self._authenticate, self._translators

        async def stream(
            request: Any, context: aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            try:
                _enter(await authenticate(_api_key(context)))
                async with contextlib.aclosing(behavior(_checked(request), context)) as responses:
                    async for response in responses:
                        yield response
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error becomes a status
                await _abort(context, exc, translators)

        return stream
