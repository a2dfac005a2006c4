"""List latency against what is stored, for each local database set-up.

With 1,000,000 messages in 20,000 threads stored, through the real gRPC
service: ``ListMessages`` of a 20-message thread, ``ListThreads`` of a user
with 3 threads and ``SendMessage`` time to first delta (p50/p95), beside the
same in a second database on the same server that holds only what is listed
(one such thread and its user's two others), interleaved so that both see
the same machine. Targets: both lists p50 at most 10 ms; time to first
delta within 10% of the empty database.

The history is written straight into the collections with ``insert_many``,
built by the store's own document builders, not sent through the model.
Each set-up (``--databases``) gets its own FerretDB, filled from empty:

- ``postgresql``: FerretDB over PostgreSQL with the GIN twins of
  scripts/postgres-gin-twins.sql (what `make run` and the tests use);
- ``postgresql-btree``: the same without the twins (FerretDB's own indexes);
- ``sqlite``: FerretDB over SQLite with its own pragmas (WAL, fsync per commit);
- ``sqlite-normal``: SQLite with ``synchronous(normal)``.

A set-up whose list takes seconds gets fewer samples (``--budget`` seconds
per measure, the warm-up call kept as a sample when it took a tenth of
that); the sample count is printed. All four set-ups at 1,000,000 messages
take about an hour on 2 cores, most of it SQLite's scans.

    python -m bench.lists [--messages 1000000] [--threads 20000] [--samples 50]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from grpc import aio
from pymongo import MongoClient

from bench.common import FerretDB, Process, machine, pct, start_loom, start_model
from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, thread_pb2, thread_pb2_grpc
from service.core import ids
from service.core.context import merge
from service.core.models import Message, MessageStatus, Role, Thread, Usage
from service.store.messages import to_doc as message_doc
from service.store.threads import to_doc as thread_doc

METADATA = (("x-api-key", "bench-key"),)
TENANT = "dev"  # the tenant of LOOM_DEV_API_KEY
SETUPS = ("postgresql", "postgresql-btree", "sqlite", "sqlite-normal")
LISTED_THREAD = 20  # messages in the thread ListMessages reads
USER_THREADS = 3  # threads of each user
BATCH = 2000


def _text(thread: int, sequence: int) -> str:
    if sequence % 2 == 0:
        return f"Question {sequence} of conversation {thread}: what to pack for a week in Lisbon?"
    return (
        f"Answer {sequence}: light clothes, a jacket for the evenings, walking shoes for the "
        "hills, and a reusable water bottle; the trams take cards, so little cash is needed."
    )


def _counts(messages: int, threads: int) -> list[int]:
    """Messages per thread: the first has LISTED_THREAD, the rest share the remainder."""
    rest, extra = divmod(messages - LISTED_THREAD, threads - 1)
    return [LISTED_THREAD] + [rest + (1 if i < extra else 0) for i in range(threads - 1)]


def _thread(index: int, count: int, assistant_id: str, start: datetime) -> tuple[dict, list[dict]]:
    """One thread's document and its messages' documents, as Loom stores them."""
    thread_id = ids.new_id(ids.THREAD)
    messages = []
    for s in range(count):
        assistant = s % 2 == 1
        messages.append(
            Message(
                message_id=ids.new_id(ids.MESSAGE),
                tenant=TENANT,
                thread_id=thread_id,
                role=Role.ASSISTANT if assistant else Role.USER,
                content=_text(index, s),
                status=MessageStatus.COMPLETE,
                sequence=s,
                model="scripted-model" if assistant else "",
                usage=Usage(40 + s, 30) if assistant else None,
                create_time=start + timedelta(seconds=s),
            )
        )
    thread = Thread(
        thread_id=thread_id,
        tenant=TENANT,
        assistant_id=assistant_id,
        user_id=f"user-{index // USER_THREADS}",
        message_count=count,
        create_time=start,
        update_time=start + timedelta(seconds=count),
        context=merge([], (m.entry() for m in messages), 400_000),
    )
    return thread_doc(thread), [message_doc(m) for m in messages]


def fill(uri: str, db: str, assistant_id: str, messages: int, threads: int) -> tuple[str, float]:
    """Write the history; return the listed thread's id and messages per second."""
    client: MongoClient[dict] = MongoClient(uri)
    collections = client[db]
    start = datetime.now(UTC) - timedelta(days=30)
    listed = ""
    written = 0
    began = time.perf_counter()

    def batches() -> Iterator[tuple[list[dict], list[dict]]]:
        nonlocal listed
        thread_docs: list[dict] = []
        message_docs: list[dict] = []
        for index, count in enumerate(_counts(messages, threads)):
            doc, docs = _thread(index, count, assistant_id, start)
            listed = listed or doc["_id"]
            thread_docs.append(doc)
            message_docs.extend(docs)
            if len(message_docs) >= BATCH:
                yield thread_docs, message_docs
                thread_docs, message_docs = [], []
        if message_docs:
            yield thread_docs, message_docs

    def write(thread_docs: list[dict], message_docs: list[dict]) -> int:
        collections["messages"].insert_many(message_docs, ordered=False)
        collections["threads"].insert_many(thread_docs, ordered=False)
        return len(message_docs)

    # Two writers keep FerretDB busy while this process builds the next batch.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pending: set[concurrent.futures.Future[int]] = set()
        for thread_docs, message_docs in batches():
            if len(pending) >= 2:
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED
                )
                written += sum(f.result() for f in done)
                rate = written / (time.perf_counter() - began)
                print(
                    f"  {written:>9,} messages, {rate:,.0f}/s",
                    end="\r",
                    file=sys.stderr,
                    flush=True,
                )
            pending.add(pool.submit(write, thread_docs, message_docs))
        written += sum(f.result() for f in pending)
    client.close()
    print(file=sys.stderr)
    return listed, written / (time.perf_counter() - began)


@dataclass
class Measure:
    """Samples of one operation, in milliseconds, within a time budget."""

    name: str
    call: Callable[[], Awaitable[float]]
    samples: list[float] = field(default_factory=list)
    spent: float = 0.0

    async def warm(self, budget: float) -> None:
        """One call that is not kept, unless it took a tenth of the budget: a
        list that scans the collection gains nothing from warming."""
        await self.take(budget)
        if self.spent < budget / 10:
            self.samples.clear()
            self.spent = 0.0

    async def take(self, budget: float) -> None:
        if self.samples and self.spent > budget:
            return
        began = time.perf_counter()
        self.samples.append(await self.call() * 1000)
        self.spent += time.perf_counter() - began


async def _ttfd(stub: thread_pb2_grpc.ThreadServiceStub, thread_id: str) -> float:
    began = time.perf_counter()
    first = 0.0
    call = stub.SendMessage(
        thread_pb2.SendMessageRequest(content="What is the weather like?", thread_id=thread_id),
        metadata=METADATA,
    )
    async for event in call:
        if event.HasField("delta") and not first:
            first = time.perf_counter() - began
    return first


async def _new_thread(stub: thread_pb2_grpc.ThreadServiceStub) -> str:
    thread_id = ""
    async for event in stub.SendMessage(
        thread_pb2.SendMessageRequest(content="Hello"), metadata=METADATA
    ):
        thread_id = thread_id or event.started.thread_id
    return thread_id


@dataclass
class Side:
    """One database seen through its own Loom: the thread ListMessages reads
    (and the assistant of the user ListThreads reads), and a thread to send on."""

    stub: thread_pb2_grpc.ThreadServiceStub
    assistant_id: str
    listed: str
    sent: str


async def _side(
    channel: aio.Channel, uri: str, db: str, messages: int, threads: int, label: str
) -> tuple[Side, float]:
    assistant = await assistant_pb2_grpc.AssistantServiceStub(channel).CreateAssistant(
        assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="a")),
        metadata=METADATA,
    )
    assistant_id = assistant.assistant.assistant_id
    print(f"{label}: writing {messages:,} messages", file=sys.stderr, flush=True)
    listed, rate = await asyncio.to_thread(fill, uri, db, assistant_id, messages, threads)
    stub = thread_pb2_grpc.ThreadServiceStub(channel)
    return Side(stub, assistant_id, listed, await _new_thread(stub)), rate


@dataclass
class Result:
    setup: str
    fill_rate: float
    measures: list[tuple[Measure, Measure]]  # (empty database, full database)


async def run_setup(setup: str, model: Process, args: argparse.Namespace) -> Result:
    """Fill one set-up and measure it."""
    backend = "postgresql" if setup.startswith("postgresql") else setup
    database = FerretDB(backend=backend).start()
    if setup == "postgresql-btree":
        assert database.postgres is not None
        database.postgres.psql(database.database, "DROP EVENT TRIGGER loom_gin_twin")
    empty_loom = start_loom(database, model, "bench_empty")
    full_loom = start_loom(database, model, "bench_full")
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{empty_loom.port}") as empty_channel,
            aio.insecure_channel(f"127.0.0.1:{full_loom.port}") as full_channel,
        ):
            # The empty database holds only what is listed: one 20-message
            # thread and its user's two other threads.
            small = LISTED_THREAD * USER_THREADS
            empty, _ = await _side(
                empty_channel, database.uri, "bench_empty", small, USER_THREADS, setup
            )
            full, rate = await _side(
                full_channel, database.uri, "bench_full", args.messages, args.threads, setup
            )
            return Result(setup, rate, await _measure(empty, full, args))
    finally:
        full_loom.stop()
        empty_loom.stop()
        database.stop()


def _measures(side: Side) -> list[Measure]:
    async def list_messages() -> float:
        request = thread_pb2.ListMessagesRequest(thread_id=side.listed)
        began = time.perf_counter()
        reply = await side.stub.ListMessages(request, metadata=METADATA)
        elapsed = time.perf_counter() - began
        assert len(reply.messages) == LISTED_THREAD, len(reply.messages)
        return elapsed

    async def list_threads() -> float:
        request = thread_pb2.ListThreadsRequest(assistant_id=side.assistant_id, user_id="user-0")
        began = time.perf_counter()
        reply = await side.stub.ListThreads(request, metadata=METADATA)
        elapsed = time.perf_counter() - began
        assert len(reply.threads) == USER_THREADS, len(reply.threads)
        return elapsed

    return [
        Measure("ListMessages, 20-message thread", list_messages),
        Measure("ListThreads, user with 3 threads", list_threads),
        Measure("SendMessage, time to first delta", lambda: _ttfd(side.stub, side.sent)),
    ]


async def _measure(
    empty: Side, full: Side, args: argparse.Namespace
) -> list[tuple[Measure, Measure]]:
    pairs = list(zip(_measures(empty), _measures(full), strict=True))
    every = [m for pair in pairs for m in pair]
    for m in every:  # warm every path (and the caches of the full database)
        await m.warm(args.budget)
    for i in range(args.samples):
        # Rotate the order so that no measure always follows the same one.
        for m in every[i % len(every) :] + every[: i % len(every)]:
            await m.take(args.budget)
    return pairs


def _header(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(
        f"{args.messages:,} messages in {args.threads:,} threads stored (full) against "
        f"only what is listed (empty); ms, n = samples:"
    )
    print(
        f"  {'set-up':<18}{'write msg/s':>12}  {'measure':<34}"
        f"{'empty p50':>10}{'p95':>9}{'full p50':>11}{'p95':>11}{'n':>5}"
    )


def _rows(r: Result) -> None:
    for i, (empty, full) in enumerate(r.measures):
        head = f"{r.setup:<18}{r.fill_rate:>12,.0f}" if i == 0 else " " * 30
        print(
            f"  {head}  {empty.name:<34}{pct(empty.samples, 50):>10.2f}"
            f"{pct(empty.samples, 95):>9.2f}{pct(full.samples, 50):>11.2f}"
            f"{pct(full.samples, 95):>11.2f}{len(full.samples):>5}"
        )
    empty, full = r.measures[2]
    ratio = pct(full.samples, 50) / pct(empty.samples, 50)
    print(f"  {'':<30}  time to first delta, full / empty (p50): {ratio:.2f}", flush=True)


async def run(args: argparse.Namespace) -> None:
    model = start_model()
    _header(args)  # each set-up's rows follow as soon as it is measured
    try:
        for setup in args.databases.split(","):
            _rows(await run_setup(setup, model, args))
    finally:
        model.stop()
    print("targets: both lists p50 <= 10 ms when full; time to first delta full / empty <= 1.10")


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per measure")
    parser.add_argument("--databases", default=",".join(SETUPS), help=f"from {SETUPS}")
    args = parser.parse_args()
    unknown = set(args.databases.split(",")) - set(SETUPS)
    if unknown:
        parser.error(f"unknown set-ups {sorted(unknown)}; choose from {SETUPS}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
