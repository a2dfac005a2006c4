"""The two transports: each carries out a plan's commands (``_plan.py``) over
one gRPC channel, blocking (``SyncTransport``) or with asyncio
(``AsyncTransport``), adding the API key and the deadline to every call and
turning gRPC errors into ``loom_client.errors`` exceptions."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from grpc import aio

from loom_client._plan import Call, Command, Emit, Invoke, Next, Open, Plan, Sleep
from loom_client._status import parse_status_details
from loom_client.errors import LoomError, error_from_status

__all__ = ["AsyncTransport", "Connection", "SyncTransport"]

T = TypeVar("T")

_VERSION = "0.1.0"
# A replica that restarts is reconnected to within the client's retry budget
# (gRPC's own default waits a second, then up to two minutes, between tries).
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 4000),
    ("grpc.primary_user_agent", f"loom-client-python/{_VERSION}"),
)


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and how to call Loom."""

    address: str
    api_key: str | None
    tls: bool | grpc.ChannelCredentials
    timeout: float | None
    channel_options: Sequence[tuple[str, Any]] = ()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),) if self.api_key else ()

    @property
    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is True:
            return grpc.ssl_channel_credentials()
        return self.tls or None

    @property
    def options(self) -> list[tuple[str, Any]]:
        return [*_CHANNEL_OPTIONS, *self.channel_options]


def to_error(exc: grpc.RpcError) -> LoomError:
    """The client exception for a failed call."""
    call = cast(grpc.Call, exc)
    details = b""
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = value if isinstance(value, bytes) else value.encode()
    return error_from_status(call.code(), call.details() or "", parse_status_details(details))


@dataclass(frozen=True, slots=True)
class _Done:
    """The value a plan returned (the end of a drive)."""

    value: Any


class SyncTransport:
    """Runs plans with blocking calls on a ``grpc.Channel``."""

    def __init__(self, connection: Connection, channel: grpc.Channel | None = None) -> None:
        self.connection = connection
        if channel is None:  # else shared with the client this one was copied from
            credentials = connection.credentials
            channel = (
                grpc.secure_channel(connection.address, credentials, connection.options)
                if credentials
                else grpc.insecure_channel(connection.address, connection.options)
            )
        self.channel = channel

    def run(self, plan: Plan[T]) -> T:
        """Carry out ``plan`` and return its value (anything emitted is dropped)."""
        with contextlib.closing(self._drive(plan)) as items:
            for item in items:
                if isinstance(item, _Done):
                    return cast(T, item.value)
        raise AssertionError("unreachable: a drive ends with _Done")

    def iterate(self, plan: Plan[Any]) -> Generator[Any, None, None]:
        """Carry out ``plan`` lazily, yielding what it emits."""
        with contextlib.closing(self._drive(plan)) as items:
            for item in items:
                if not isinstance(item, _Done):
                    yield item

    def close(self) -> None:
        self.channel.close()

    def _drive(self, plan: Plan[Any]) -> Generator[Any, None, None]:
        stream: Any = None
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    command = plan.send(reply) if error is None else plan.throw(error)
                except StopIteration as stop:
                    yield _Done(stop.value)
                    return
                reply, error = None, None
                if isinstance(command, Emit):
                    yield command.item
                    continue
                if isinstance(command, Open) and stream is not None:
                    stream.cancel()
                try:
                    reply, stream = self._execute(command, stream)
                except grpc.RpcError as exc:
                    error = to_error(exc)
                except (
                    Exception
                ) as exc:  # a caller's function failed (Invoke): thrown into the plan
                    if not isinstance(command, Invoke):
                        raise
                    error = exc
        finally:
            if stream is not None:
                stream.cancel()
            plan.close()

    def _execute(self, command: Command, stream: Any) -> tuple[Any, Any]:
        timeout, metadata = self.connection.timeout, self.connection.metadata
        match command:
            case Call(rpc, request):
                unary = self.channel.unary_unary(
                    rpc.path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=rpc.response.FromString,
                )
                return unary(request, timeout=timeout, metadata=metadata), stream
            case Open(rpc, request):
                streaming = self.channel.unary_stream(
                    rpc.path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=rpc.response.FromString,
                )
                return None, streaming(request, timeout=timeout, metadata=metadata)
            case Next():
                return next(stream, None), stream
            case Sleep(seconds):
                time.sleep(seconds)
                return None, stream
            case Invoke(function, kwargs):
                result = function(**kwargs)
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never to be awaited here
                    raise TypeError(
                        f"{function.__name__} is a coroutine function: use AsyncLoom to run it"
                    )
                return result, stream
        raise TypeError(f"unknown command {command!r}")


class AsyncTransport:
    """Runs plans with asyncio on a ``grpc.aio.Channel``, created on first use
    (so that the client can be built outside a running event loop)."""

    def __init__(self, connection: Connection, parent: AsyncTransport | None = None) -> None:
        self.connection = connection
        self._parent = parent  # whose channel this one shares (``with_options``)
        self._channel: aio.Channel | None = None

    def sharing(self, connection: Connection) -> AsyncTransport:
        """A transport with other options on this one's channel."""
        return AsyncTransport(connection, self._parent or self)

    @property
    def channel(self) -> aio.Channel:
        if self._parent is not None:
            return self._parent.channel
        if self._channel is None:
            credentials = self.connection.credentials
            address, options = self.connection.address, self.connection.options
            self._channel = (
                aio.secure_channel(address, credentials, options)
                if credentials
                else aio.insecure_channel(address, options)
            )
        return self._channel

    async def run(self, plan: Plan[T]) -> T:
        """Carry out ``plan`` and return its value (anything emitted is dropped)."""
        async with contextlib.aclosing(self._drive(plan)) as items:
            async for item in items:
                if isinstance(item, _Done):
                    return cast(T, item.value)
        raise AssertionError("unreachable: a drive ends with _Done")

    async def iterate(self, plan: Plan[Any]) -> AsyncGenerator[Any, None]:
        """Carry out ``plan`` lazily, yielding what it emits."""
        async with contextlib.aclosing(self._drive(plan)) as items:
            async for item in items:
                if not isinstance(item, _Done):
                    yield item

    async def close(self) -> None:
        """Close the channel (shared with ``with_options`` copies)."""
        if self._parent is not None:
            await self._parent.close()
        elif self._channel is not None:
            await self._channel.close()

    async def _drive(self, plan: Plan[Any]) -> AsyncGenerator[Any, None]:
        stream: Any = None
        reply: Any = None
        error: BaseException | None = None
        try:
            while True:
                try:
                    command = plan.send(reply) if error is None else plan.throw(error)
                except StopIteration as stop:
                    yield _Done(stop.value)
                    return
                reply, error = None, None
                if isinstance(command, Emit):
                    yield command.item
                    continue
                if isinstance(command, Open) and stream is not None:
                    stream.cancel()
                try:
                    reply, stream = await self._execute(command, stream)
                except grpc.RpcError as exc:
                    error = to_error(exc)
                except (
                    Exception
                ) as exc:  # a caller's function failed (Invoke): thrown into the plan
                    if not isinstance(command, Invoke):
                        raise
                    error = exc
        finally:
            if stream is not None:
                stream.cancel()
            plan.close()

    async def _execute(self, command: Command, stream: Any) -> tuple[Any, Any]:
        timeout, metadata = self.connection.timeout, self.connection.metadata
        match command:
            case Call(rpc, request):
                unary = self.channel.unary_unary(
                    rpc.path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=rpc.response.FromString,
                )
                return await unary(request, timeout=timeout, metadata=metadata), stream
            case Open(rpc, request):
                streaming = self.channel.unary_stream(
                    rpc.path,
                    request_serializer=type(request).SerializeToString,
                    response_deserializer=rpc.response.FromString,
                )
                return None, streaming(request, timeout=timeout, metadata=metadata)
            case Next():
                message = await stream.read()
                return (None if message is aio.EOF else message), stream
            case Sleep(seconds):
                await asyncio.sleep(seconds)
                return None, stream
            case Invoke(function, kwargs):
                result = function(**kwargs)
                return (await result if inspect.isawaitable(result) else result), stream
        raise TypeError(f"unknown command {command!r}")
