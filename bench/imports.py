"""Importing history with AddMessages.

10,000 messages (users and assistant alternating, chat-sized) go into one
new thread through the API, in batches of 1,000, with memory OFF; the
baseline, in the same run, writes the same documents straight into FerretDB
with PyMongo (insert_many per 1,000, into a collection with the same unique
(thread_id, sequence) index): what the database alone costs for them. The
two alternate, ``--rounds`` times. Then, with ``--memory`` messages, the same
import under an assistant with memory AUTO (each batch's user messages are
embedded and indexed before the call returns).

Loom, FerretDB and the scripted model each run as their own process.

    python -m bench.imports [--rounds 3] [--messages 10000] [--memory 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from grpc import aio
from pymongo import ASCENDING, AsyncMongoClient, IndexModel

from bench.common import FerretDB, machine, start_loom, start_model
from generated.loom.v1 import (
    assistant_pb2,
    assistant_pb2_grpc,
    common_pb2,
    thread_pb2,
    thread_pb2_grpc,
)
from service.core import ids
from service.core.models import Message, MessageStatus, Role
from service.store.messages import to_doc

METADATA = (("x-api-key", "bench-key"),)
BATCH = 1000


def _text(i: int) -> str:
    if i % 2 == 0:
        return f"Question {i}: could you check where my order number {i} is right now?"
    return f"Answer {i}: your order {i - 1} left the warehouse this morning and ships today."


def _batch(start: int, size: int) -> list[thread_pb2.Message]:
    return [
        thread_pb2.Message(
            role=thread_pb2.ROLE_USER if i % 2 == 0 else thread_pb2.ROLE_ASSISTANT,
            content=_text(i),
        )
        for i in range(start, start + size)
    ]


async def _import(
    stub: thread_pb2_grpc.ThreadServiceStub, total: int, assistant_id: str = ""
) -> tuple[float, str]:
    """Import ``total`` messages into a new thread; (seconds, thread id)."""
    thread_id = ""
    started = time.perf_counter()
    for start in range(0, total, BATCH):
        request = thread_pb2.AddMessagesRequest(
            thread_id=thread_id,
            assistant_id="" if thread_id else assistant_id,
            messages=_batch(start, min(BATCH, total - start)),
            request_id=f"bench-{assistant_id}-{started}-{start}",
        )
        added = await stub.AddMessages(request, metadata=METADATA, timeout=600)
        thread_id = added.thread.thread_id
    elapsed = time.perf_counter() - started
    got = await stub.GetThread(thread_pb2.GetThreadRequest(thread_id=thread_id), metadata=METADATA)
    assert got.thread.message_count == total, got.thread.message_count
    return elapsed, thread_id


def _docs(thread_id: str, start: int, size: int) -> list[dict[str, Any]]:
    """The documents Loom stores for these messages, as its store writes them."""
    t = datetime.now(UTC)
    return [
        to_doc(
            Message(
                ids.new_id(ids.MESSAGE),
                "bench",
                thread_id,
                Role.USER if i % 2 == 0 else Role.ASSISTANT,
                _text(i),
                MessageStatus.COMPLETE,
                sequence=i,
                create_time=t,
            )
        )
        for i in range(start, start + size)
    ]


async def _baseline(uri: str, total: int) -> float:
    """Seconds to write the same documents straight into FerretDB."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    try:
        collection = client["bench_imports_raw"]["messages"]
        index = IndexModel([("thread_id", ASCENDING), ("sequence", ASCENDING)], unique=True)
        await collection.create_indexes([index])
        thread_id = ids.new_id(ids.THREAD)
        started = time.perf_counter()
        for start in range(0, total, BATCH):
            await collection.insert_many(_docs(thread_id, start, min(BATCH, total - start)))
        return time.perf_counter() - started
    finally:
        await client.close()


async def _memory_assistant(channel: aio.Channel) -> str:
    stub = assistant_pb2_grpc.AssistantServiceStub(channel)
    created = await stub.CreateAssistant(
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="Imports", memory_mode=common_pb2.MEMORY_MODE_AUTO
            )
        ),
        metadata=METADATA,
    )
    return str(created.assistant.assistant_id)


async def run(rounds: int, total: int, memory: int) -> None:
    ferretdb = FerretDB().start()
    model = start_model()
    loom = start_loom(ferretdb, model, "bench_imports")
    loom_s: list[float] = []
    raw_s: list[float] = []
    memory_s = 0.0
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            stub = thread_pb2_grpc.ThreadServiceStub(channel)
            await _import(stub, BATCH)  # warm up both paths
            await _baseline(ferretdb.uri, BATCH)
            for i in range(rounds):
                # Alternate the order so neither side always runs second.
                if i % 2:
                    raw_s.append(await _baseline(ferretdb.uri, total))
                    loom_s.append((await _import(stub, total))[0])
                else:
                    loom_s.append((await _import(stub, total))[0])
                    raw_s.append(await _baseline(ferretdb.uri, total))
            if memory:
                memory_s, _ = await _import(stub, memory, await _memory_assistant(channel))
    finally:
        loom.stop()
        model.stop()
        ferretdb.stop()

    loom_med, raw_med = statistics.median(loom_s), statistics.median(raw_s)
    print(f"machine: {machine()}")
    print(f"{total:,} messages into one thread, batches of {BATCH:,}, {rounds} rounds (median):")
    print(
        f"  AddMessages through Loom, memory OFF: {loom_med:.2f} s "
        f"({total / loom_med:,.0f} messages/s; rounds {', '.join(f'{s:.2f}' for s in loom_s)})"
    )
    print(
        f"  baseline, insert_many straight into FerretDB: {raw_med:.2f} s "
        f"({total / raw_med:,.0f} messages/s; rounds {', '.join(f'{s:.2f}' for s in raw_s)})"
    )
    print(f"  Loom over the baseline: {loom_med / raw_med:.2f}x")
    if memory:
        print(
            f"{memory:,} messages with memory AUTO ({memory // 2:,} user messages embedded and "
            f"indexed): {memory_s:.2f} s ({memory / memory_s:,.0f} messages/s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--memory", type=int, default=2_000, help="0 to skip")
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.messages, args.memory))


if __name__ == "__main__":
    main()
