"""``Loom`` and ``AsyncLoom``: the same surface twice, each method one line
that hands the call's plan (``_calls.py``) to its transport."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any, Self, Unpack

import grpc

from loom_client._calls import Functions, Plans
from loom_client._plan import Retry
from loom_client._transport import AsyncTransport, Connection, SyncTransport
from loom_client.params import AssistantFields, MemoryChanges, NewMemory, SendOptions, ThreadFields
from loom_client.types import (
    Assistant,
    Event,
    Memory,
    MemoryOperation,
    Message,
    Reply,
    ScoredMemory,
    Thread,
)

__all__ = ["AsyncLoom", "Loom"]

DEFAULT_ADDRESS = "127.0.0.1:50051"
ScoredMemories = list[ScoredMemory]


def _connection(
    address: str | None,
    api_key: str | None,
    tls: bool | grpc.ChannelCredentials,
    timeout: float | None,
    channel_options: Sequence[tuple[str, Any]],
) -> Connection:
    return Connection(
        address=address or os.environ.get("LOOM_ADDRESS") or DEFAULT_ADDRESS,
        api_key=api_key if api_key is not None else os.environ.get("LOOM_API_KEY"),
        tls=tls,
        timeout=timeout,
        channel_options=tuple(channel_options),
    )


# --------------------------------------------------------------------- sync


class Assistants:
    """``loom.assistants``: create, read, list, update and delete assistants."""

    def __init__(self, transport: SyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    def create(self, **fields: Unpack[AssistantFields]) -> Assistant:
        return self._t.run(self._p.create_assistant(fields))

    def get(self, assistant_id: str) -> Assistant:
        return self._t.run(self._p.get_assistant(assistant_id))

    def list(self, *, page_size: int = 0) -> Iterator[Assistant]:
        """Every assistant, newest first, fetched a page at a time as you read."""
        return self._t.iterate(self._p.list_assistants(page_size))

    def update(self, assistant_id: str, **fields: Unpack[AssistantFields]) -> Assistant:
        """Change exactly the fields given."""
        return self._t.run(self._p.update_assistant(assistant_id, fields))

    def delete(self, assistant_id: str) -> int:
        """Delete an assistant with its threads; returns how many threads went."""
        return self._t.run(self._p.delete_assistant(assistant_id))


class Threads:
    """``loom.threads``: threads and their messages."""

    def __init__(self, transport: SyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    def create(self, **fields: Unpack[ThreadFields]) -> Thread:
        return self._t.run(self._p.create_thread(fields))

    def get(self, thread_id: str) -> Thread:
        return self._t.run(self._p.get_thread(thread_id))

    def list(
        self, *, assistant_id: str = "", user_id: str = "", page_size: int = 0
    ) -> Iterator[Thread]:
        """Every thread (of one assistant or user, if given), newest first."""
        return self._t.iterate(self._p.list_threads(assistant_id, user_id, page_size))

    def delete(self, thread_id: str, *, delete_memories: bool = False) -> int:
        """Delete a thread; returns how many messages went with it."""
        return self._t.run(self._p.delete_thread(thread_id, delete_memories))

    def messages(
        self, thread_id: str, *, order: str = "asc", page_size: int = 0
    ) -> Iterator[Message]:
        """Every message of a thread, oldest first (``order="desc"``: newest
        first), fetched a page at a time as you read."""
        return self._t.iterate(self._p.list_messages(thread_id, order, page_size))


class Memories:
    """``loom.memories``: an assistant's long-term memory."""

    def __init__(self, transport: SyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    def create(self, assistant_id: str, content: str, **fields: Unpack[NewMemory]) -> Memory:
        return self._t.run(self._p.create_memory(assistant_id, content, fields))

    def get(self, assistant_id: str, memory_id: str) -> Memory:
        return self._t.run(self._p.get_memory(assistant_id, memory_id))

    def list(
        self,
        assistant_id: str,
        *,
        user_id: str = "",
        assistant_wide_only: bool = False,
        page_size: int = 0,
    ) -> Iterator[Memory]:
        """Every memory of an assistant (or of one user), oldest first."""
        plan = self._p.list_memories(assistant_id, user_id, assistant_wide_only, page_size)
        return self._t.iterate(plan)

    def search(
        self,
        assistant_id: str,
        query: str,
        *,
        user_id: str = "",
        limit: int = 0,
        min_score: float = 0.0,
    ) -> ScoredMemories:
        """Memories ranked by relevance to ``query``, best first."""
        plan = self._p.search_memories(assistant_id, query, user_id, limit, min_score)
        return self._t.run(plan)

    def update(self, assistant_id: str, memory_id: str, **fields: Unpack[MemoryChanges]) -> Memory:
        return self._t.run(self._p.update_memory(assistant_id, memory_id, fields))

    def delete(self, assistant_id: str, memory_id: str) -> None:
        self._t.run(self._p.delete_memory(assistant_id, memory_id))

    def operation(self, operation_id: str) -> MemoryOperation:
        return self._t.run(self._p.get_operation(operation_id))

    def wait(
        self, operation_id: str, *, timeout: float = 60.0, interval: float = 0.1
    ) -> MemoryOperation:
        """Wait until a memory operation has succeeded or failed, and return it.

        Raises:
            TimeoutError: it had not after ``timeout`` seconds.
        """
        return self._t.run(self._p.wait_operation(operation_id, timeout, interval))


class Loom:
    """A blocking client of one Loom (or a fleet behind one address).

    ``address`` defaults to ``$LOOM_ADDRESS``, then ``127.0.0.1:50051``;
    ``api_key`` to ``$LOOM_API_KEY``. ``tls=True`` uses the system's root
    certificates; pass ``grpc.ssl_channel_credentials(...)`` for your own CA
    or a client certificate. ``timeout`` bounds each call (a whole reply
    stream included); UNAVAILABLE is retried up to ``max_retries`` times.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float | None = 600.0,
        max_retries: int = 4,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        connection = _connection(address, api_key, tls, timeout, channel_options)
        self._bind(SyncTransport(connection), Plans(Retry(max_retries)))

    @property
    def address(self) -> str:
        """The address this client calls."""
        return self._t.connection.address

    def _bind(self, transport: SyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans
        self.assistants = Assistants(transport, plans)
        self.threads = Threads(transport, plans)
        self.memories = Memories(transport, plans)

    def with_options(self, *, timeout: float | None = None, max_retries: int | None = None) -> Loom:
        """A client on the same channel (closing either closes it) with another
        timeout or retry budget."""
        clone = object.__new__(Loom)
        connection = replace(self._t.connection, timeout=timeout or self._t.connection.timeout)
        retry = Retry(self._p.retry.max_retries if max_retries is None else max_retries)
        clone._bind(SyncTransport(connection, self._t.channel), Plans(retry))
        return clone

    def send_message(self, content: str, **options: Unpack[SendOptions]) -> Reply:
        """Send a user message and return the reply once it is stored; without
        ``thread_id`` a thread is created (``reply.thread_id``)."""
        return self._t.run(self._p.send(content, options))

    def stream_message(
        self, content: str, **options: Unpack[SendOptions]
    ) -> Generator[Event, None, None]:
        """As ``send_message``, yielding ``Started``, ``MemoriesRecalled`` and
        ``TextDelta`` events as they come, then the ``Reply`` last; closing
        the generator early cancels the call (the reply is stored
        INCOMPLETE)."""
        return self._t.iterate(Plans.emit_reply(self._p.send(content, options)))

    def submit_tool_outputs(self, thread_id: str, run_id: str, outputs: Mapping[str, Any]) -> Reply:
        """Answer a run's tool calls (``{tool_call_id: output}``) and return the
        continued reply (which may ask for tools again)."""
        return self._t.run(self._p.submit(thread_id, run_id, outputs))

    def stream_tool_outputs(
        self, thread_id: str, run_id: str, outputs: Mapping[str, Any]
    ) -> Generator[Event, None, None]:
        """As ``submit_tool_outputs``, streaming the continued reply's events."""
        return self._t.iterate(Plans.emit_reply(self._p.submit(thread_id, run_id, outputs)))

    def cancel_run(self, thread_id: str, run_id: str) -> Message:
        """Cancel a run that waits for tool outputs; the thread is free again."""
        return self._t.run(self._p.cancel_run(thread_id, run_id))

    def run_tools(
        self, content: str, functions: Functions, **options: Unpack[SendOptions]
    ) -> Reply:
        """Send a message and run the model's tool calls with ``functions``
        (by name) until the reply completes. Offer the tools to the model on
        the assistant or with ``tools=``."""
        return self._t.run(self._p.run_tools(content, functions, options))

    def close(self) -> None:
        self._t.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------- async


class AsyncAssistants:
    """``loom.assistants`` of ``AsyncLoom``."""

    def __init__(self, transport: AsyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    async def create(self, **fields: Unpack[AssistantFields]) -> Assistant:
        return await self._t.run(self._p.create_assistant(fields))

    async def get(self, assistant_id: str) -> Assistant:
        return await self._t.run(self._p.get_assistant(assistant_id))

    def list(self, *, page_size: int = 0) -> AsyncIterator[Assistant]:
        return self._t.iterate(self._p.list_assistants(page_size))

    async def update(self, assistant_id: str, **fields: Unpack[AssistantFields]) -> Assistant:
        return await self._t.run(self._p.update_assistant(assistant_id, fields))

    async def delete(self, assistant_id: str) -> int:
        return await self._t.run(self._p.delete_assistant(assistant_id))


class AsyncThreads:
    """``loom.threads`` of ``AsyncLoom``."""

    def __init__(self, transport: AsyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    async def create(self, **fields: Unpack[ThreadFields]) -> Thread:
        return await self._t.run(self._p.create_thread(fields))

    async def get(self, thread_id: str) -> Thread:
        return await self._t.run(self._p.get_thread(thread_id))

    def list(
        self, *, assistant_id: str = "", user_id: str = "", page_size: int = 0
    ) -> AsyncIterator[Thread]:
        return self._t.iterate(self._p.list_threads(assistant_id, user_id, page_size))

    async def delete(self, thread_id: str, *, delete_memories: bool = False) -> int:
        return await self._t.run(self._p.delete_thread(thread_id, delete_memories))

    def messages(
        self, thread_id: str, *, order: str = "asc", page_size: int = 0
    ) -> AsyncIterator[Message]:
        return self._t.iterate(self._p.list_messages(thread_id, order, page_size))


class AsyncMemories:
    """``loom.memories`` of ``AsyncLoom``."""

    def __init__(self, transport: AsyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans

    async def create(self, assistant_id: str, content: str, **fields: Unpack[NewMemory]) -> Memory:
        return await self._t.run(self._p.create_memory(assistant_id, content, fields))

    async def get(self, assistant_id: str, memory_id: str) -> Memory:
        return await self._t.run(self._p.get_memory(assistant_id, memory_id))

    def list(
        self,
        assistant_id: str,
        *,
        user_id: str = "",
        assistant_wide_only: bool = False,
        page_size: int = 0,
    ) -> AsyncIterator[Memory]:
        plan = self._p.list_memories(assistant_id, user_id, assistant_wide_only, page_size)
        return self._t.iterate(plan)

    async def search(
        self,
        assistant_id: str,
        query: str,
        *,
        user_id: str = "",
        limit: int = 0,
        min_score: float = 0.0,
    ) -> ScoredMemories:
        plan = self._p.search_memories(assistant_id, query, user_id, limit, min_score)
        return await self._t.run(plan)

    async def update(
        self, assistant_id: str, memory_id: str, **fields: Unpack[MemoryChanges]
    ) -> Memory:
        return await self._t.run(self._p.update_memory(assistant_id, memory_id, fields))

    async def delete(self, assistant_id: str, memory_id: str) -> None:
        await self._t.run(self._p.delete_memory(assistant_id, memory_id))

    async def operation(self, operation_id: str) -> MemoryOperation:
        return await self._t.run(self._p.get_operation(operation_id))

    async def wait(
        self,
        operation_id: str,
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 - a bound on polling, as in Loom.memories.wait
        interval: float = 0.1,
    ) -> MemoryOperation:
        return await self._t.run(self._p.wait_operation(operation_id, timeout, interval))


class AsyncLoom:
    """The asyncio client: the surface of ``Loom`` with coroutines and async
    iterators (close an abandoned stream with ``contextlib.aclosing``)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float | None = 600.0,
        max_retries: int = 4,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        connection = _connection(address, api_key, tls, timeout, channel_options)
        self._bind(AsyncTransport(connection), Plans(Retry(max_retries)))

    @property
    def address(self) -> str:
        """The address this client calls."""
        return self._t.connection.address

    def _bind(self, transport: AsyncTransport, plans: Plans) -> None:
        self._t, self._p = transport, plans
        self.assistants = AsyncAssistants(transport, plans)
        self.threads = AsyncThreads(transport, plans)
        self.memories = AsyncMemories(transport, plans)

    def with_options(
        self, *, timeout: float | None = None, max_retries: int | None = None
    ) -> AsyncLoom:
        clone = object.__new__(AsyncLoom)
        connection = replace(self._t.connection, timeout=timeout or self._t.connection.timeout)
        retry = Retry(self._p.retry.max_retries if max_retries is None else max_retries)
        clone._bind(self._t.sharing(connection), Plans(retry))
        return clone

    async def send_message(self, content: str, **options: Unpack[SendOptions]) -> Reply:
        return await self._t.run(self._p.send(content, options))

    def stream_message(
        self, content: str, **options: Unpack[SendOptions]
    ) -> AsyncGenerator[Event, None]:
        return self._t.iterate(Plans.emit_reply(self._p.send(content, options)))

    async def submit_tool_outputs(
        self, thread_id: str, run_id: str, outputs: Mapping[str, Any]
    ) -> Reply:
        return await self._t.run(self._p.submit(thread_id, run_id, outputs))

    def stream_tool_outputs(
        self, thread_id: str, run_id: str, outputs: Mapping[str, Any]
    ) -> AsyncGenerator[Event, None]:
        return self._t.iterate(Plans.emit_reply(self._p.submit(thread_id, run_id, outputs)))

    async def cancel_run(self, thread_id: str, run_id: str) -> Message:
        return await self._t.run(self._p.cancel_run(thread_id, run_id))

    async def run_tools(
        self, content: str, functions: Functions, **options: Unpack[SendOptions]
    ) -> Reply:
        """As ``Loom.run_tools``; ``functions`` may be coroutine functions."""
        return await self._t.run(self._p.run_tools(content, functions, options))

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
