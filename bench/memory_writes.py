"""Memory writes through the API: ``python -m bench.memory_writes``.

1. CreateMemory one at a time (the baseline): latency p50/p95 and the rate
   it gives, ``--singles`` calls.
2. BatchCreateMemories, ``--batches`` calls of 1,000 memories each:
   memories per second through the API, per call and overall.
3. SearchMemories over what was written (10,000 memories and more with the
   default ``--batches``), ``--searches`` calls, limit 10: latency p50/p95,
   the query's embedding included.

Two Looms side by side, their calls taken in turn (the order rotating)
so that both see the machine's load alike: one with the default embedder
(all-MiniLM-L6-v2 run in Loom's process), one with an embedding endpoint
that answers at once (the scripted server's ``/v1/embeddings``), which
leaves Loom's own cost per memory. Last, for reference, the same texts
through all-MiniLM-L6-v2 alone in this process.

``--endpoint-only`` leaves out the default embedder (minutes of a loaded
machine); ``--base REV`` adds that revision's Loom with the endpoint
(``git archive``, as ``bench.ab`` does), for a before and after:

    python -m bench.memory_writes --endpoint-only --base HEAD~1 --singles 30 --batches 3

The memories are short facts of 8 to 16 words, like those extraction
writes and an import from a CRM carries. Loom, FerretDB and the scripted
model each run as their own process; Loom uses embedded Chroma.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from pathlib import Path

from grpc import aio

from bench.ab import checkout
from bench.common import (
    MODEL_DIR,
    REPO,
    FerretDB,
    Process,
    machine,
    pct,
    process_cpu_seconds,
    start_loom,
    start_model,
)
from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, memory_pb2, memory_pb2_grpc

METADATA = (("x-api-key", "bench-key"),)
BATCH = 1000

_WHO = ["The user", "The customer", "Their manager", "The user's sister", "The account owner"]
_DOES = [
    "prefers",
    "asked about",
    "is allergic to",
    "ordered",
    "complained about",
    "recommended",
    "plans to buy",
    "cancelled",
]
_WHAT = [
    "window seats on long flights",
    "the premium support plan",
    "peanuts and tree nuts",
    "a standing desk with a walnut top",
    "late deliveries to the Lisbon office",
    "green tea from a small shop in Kyoto",
    "two tickets for the Saturday concert",
    "the annual subscription renewal",
]
_WHEN = ["last week", "in March", "every Monday", "before the holidays", "yesterday", "twice"]


def facts(n: int, seed: int) -> list[str]:
    """``n`` short facts, deterministic for a seed."""
    rng = random.Random(seed)  # noqa: S311 - sample text, not secrets
    return [
        f"{rng.choice(_WHO)} {rng.choice(_DOES)} {rng.choice(_WHAT)} {rng.choice(_WHEN)} "
        f"(note {seed}-{i})."
        for i in range(n)
    ]


Measured = tuple[list[float], float, list[float], list[float], list[float]]


class Side:
    """One Loom under measure: its channel, an assistant, the figures."""

    def __init__(self, channel: aio.Channel, pid: int) -> None:
        self.channel = channel
        self.pid = pid
        self.memory = memory_pb2_grpc.MemoryServiceStub(channel)
        self.assistant_id = ""
        self.single_ms: list[float] = []
        self.batch_s: list[float] = []
        self.batch_cpu: list[float] = []  # Loom's CPU seconds (all threads) of each call
        self.search_ms: list[float] = []

    async def start(self) -> None:
        created = await assistant_pb2_grpc.AssistantServiceStub(self.channel).CreateAssistant(
            assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="b")),
            metadata=METADATA,
        )
        self.assistant_id = created.assistant.assistant_id
        for text in facts(5, 0):  # warm up: the embedding session and the collection
            await self.one(text)

    async def one(self, text: str) -> float:
        t = time.perf_counter()
        await self.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(assistant_id=self.assistant_id, content=text)
            ),
            metadata=METADATA,
        )
        return time.perf_counter() - t

    async def batch(self, texts: list[str]) -> float:
        request = memory_pb2.BatchCreateMemoriesRequest(
            assistant_id=self.assistant_id, memories=[memory_pb2.Memory(content=t) for t in texts]
        )
        cpu, t = process_cpu_seconds(self.pid), time.perf_counter()
        await self.memory.BatchCreateMemories(request, metadata=METADATA, timeout=600)
        self.batch_cpu.append(process_cpu_seconds(self.pid) - cpu)
        return time.perf_counter() - t

    async def search(self, query: str) -> float:
        t = time.perf_counter()
        await self.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(assistant_id=self.assistant_id, query=query, limit=10),
            metadata=METADATA,
        )
        return time.perf_counter() - t


async def measure(
    looms: list[Process], singles: int, batches: int, searches: int
) -> list[Measured]:
    """Against each Loom, their calls taken in turn (the order
    rotating) so that they share the machine's load alike: single-call
    latencies (ms) and their rate, the seconds of each batch call, then
    search latencies (ms)."""
    sides = [Side(aio.insecure_channel(f"127.0.0.1:{p.port}"), p.proc.pid) for p in looms]
    try:
        for side in sides:
            await side.start()
        for i, text in enumerate(facts(singles, 1)):
            for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
                side.single_ms.append(1000 * await side.one(text))
        for b in range(batches):
            texts = facts(BATCH, 100 + b)
            for side in sides[b % len(sides) :] + sides[: b % len(sides)]:
                side.batch_s.append(await side.batch(texts))
        queries = [q.rsplit(" (", 1)[0] + "?" for q in facts(searches + 5, 7)]
        for i, query in enumerate(queries):
            for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
                side.search_ms.append(1000 * await side.search(query))
    finally:
        for side in sides:
            await side.channel.close()
    # The first searches read the collection into the search caches.
    return [
        (
            s.single_ms,
            1000 * len(s.single_ms) / sum(s.single_ms),
            s.batch_s,
            s.batch_cpu,
            s.search_ms[5:],
        )
        for s in sides
    ]


def report(name: str, singles: int, result: Measured) -> None:
    single_ms, single_rate, batch_s, batch_cpu, search_ms = result
    rate = len(batch_s) * BATCH / sum(batch_s)
    print(f"{name}:")
    print(
        f"  CreateMemory one at a time ({singles} calls): p50 {pct(single_ms, 50):.1f} ms, "
        f"p95 {pct(single_ms, 95):.1f} ms; {single_rate:.0f} memories/s"
    )
    print(
        f"  BatchCreateMemories, {len(batch_s)} calls of {BATCH:,}: {rate:.0f} memories/s "
        f"({rate / single_rate:.0f}x one at a time); per call p50 {pct(batch_s, 50):.2f} s, "
        f"best {min(batch_s):.2f} s; Loom's CPU per call p50 {pct(batch_cpu, 50):.2f} s"
    )
    if search_ms:
        print(
            f"  SearchMemories over {singles + 5 + len(batch_s) * BATCH:,} memories, limit 10 "
            f"({len(search_ms)} calls): p50 {pct(search_ms, 50):.1f} ms, "
            f"p95 {pct(search_ms, 95):.1f} ms"
        )


async def run(args: argparse.Namespace) -> None:
    endpoint = {"LOOM_EMBEDDING": "openai:scripted-embedding"}
    plans: list[tuple[str, dict[str, str], Path]] = []
    if not args.endpoint_only:
        plans.append(("all-MiniLM-L6-v2 in Loom's process (the default)", {}, REPO))
    if args.base:
        plans.append(
            (
                f"{args.base}: an embedding endpoint that answers at once",
                endpoint,
                checkout(args.base),
            )
        )
    plans.append(("an embedding endpoint that answers at once (Loom's own cost)", endpoint, REPO))
    load_before = os.getloadavg()[0]
    ferretdb = FerretDB().start()
    model = start_model()
    looms = []
    try:
        for n, (_, extra, source) in enumerate(plans):
            looms.append(
                start_loom(ferretdb, model, f"bench_memory_writes_{n}", source=source, **extra)
            )
        measured = await measure(looms, args.singles, args.batches, args.searches)
    finally:
        for loom in looms:
            loom.stop()
        model.stop()
        ferretdb.stop()
    results = {name: m for (name, _, _), m in zip(plans, measured, strict=True)}

    from service.memory.embeddings import OnnxMiniLM

    embedder = OnnxMiniLM(MODEL_DIR)
    texts = facts(BATCH, 999)
    embedder.embed_sync(texts[:64])
    t = time.perf_counter()
    embedder.embed_sync(texts)
    embed_rate = BATCH / (time.perf_counter() - t)
    embedder.close()

    print(
        f"machine: {machine()}; load average {load_before:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    for name, result in results.items():
        report(name, args.singles, result)
    print(f"all-MiniLM-L6-v2 alone, in this process, on the same texts: {embed_rate:.0f} texts/s")


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--singles", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--endpoint-only", action="store_true")
    parser.add_argument("--base", default="", help="a revision to measure before this checkout")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
