"""Memory writes through the API: ``python -m bench.memory_writes``.

1. CreateMemory one at a time (the baseline): latency p50/p95 and the rate
   it gives, ``--singles`` calls.
2. BatchCreateMemories, ``--batches`` calls of 1,000 memories each:
   memories per second through the API, per call and overall.
3. SearchMemories over what was written (10,000 memories and more with the
   default ``--batches``), ``--searches`` calls, limit 10: latency p50/p95,
   the query's embedding included.

Both with the default embedder (all-MiniLM-L6-v2 run in Loom's process),
then with an embedding endpoint that answers at once (the scripted
server's ``/v1/embeddings``), which leaves Loom's own cost per memory.
Last, for reference, the same texts through all-MiniLM-L6-v2 alone in this
process.

``--endpoint-only`` skips the default embedder (minutes of a loaded
machine); ``--base REV`` measures that revision's Loom (``git archive``,
as ``bench.ab`` does) in the same run, before this checkout's, for a
before and after:

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
from bench.common import MODEL_DIR, REPO, FerretDB, machine, pct, start_loom, start_model
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


Measured = tuple[list[float], float, list[float], list[float]]


async def measure(port: int, singles: int, batches: int, searches: int) -> Measured:
    """Against the Loom at ``port``: single-call latencies (ms) and their
    rate, the seconds of each batch call, then search latencies (ms)."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        created = await assistants.CreateAssistant(
            assistant_pb2.CreateAssistantRequest(assistant=assistant_pb2.Assistant(name="b")),
            metadata=METADATA,
        )
        assistant_id = created.assistant.assistant_id

        async def one(text: str) -> None:
            await memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(
                    memory=memory_pb2.Memory(assistant_id=assistant_id, content=text)
                ),
                metadata=METADATA,
            )

        for text in facts(5, 0):  # warm up: the embedding session and the collection
            await one(text)
        single_ms = []
        started = time.perf_counter()
        for text in facts(singles, 1):
            t = time.perf_counter()
            await one(text)
            single_ms.append((time.perf_counter() - t) * 1000)
        single_rate = singles / (time.perf_counter() - started)
        batch_s = []
        for b in range(batches):
            request = memory_pb2.BatchCreateMemoriesRequest(
                assistant_id=assistant_id,
                memories=[memory_pb2.Memory(content=t) for t in facts(BATCH, 100 + b)],
            )
            t = time.perf_counter()
            await memory.BatchCreateMemories(request, metadata=METADATA, timeout=600)
            batch_s.append(time.perf_counter() - t)
        search_ms = []
        for query in [q.rsplit(" (", 1)[0] + "?" for q in facts(searches + 5, 7)]:
            t = time.perf_counter()
            await memory.SearchMemories(
                memory_pb2.SearchMemoriesRequest(assistant_id=assistant_id, query=query, limit=10),
                metadata=METADATA,
            )
            search_ms.append((time.perf_counter() - t) * 1000)
    # The first searches read the collection into the search caches.
    return single_ms, single_rate, batch_s, search_ms[5:]


def report(name: str, singles: int, result: Measured) -> None:
    single_ms, single_rate, batch_s, search_ms = result
    rate = len(batch_s) * BATCH / sum(batch_s)
    print(f"{name}:")
    print(
        f"  CreateMemory one at a time ({singles} calls): p50 {pct(single_ms, 50):.1f} ms, "
        f"p95 {pct(single_ms, 95):.1f} ms; {single_rate:.0f} memories/s"
    )
    print(
        f"  BatchCreateMemories, {len(batch_s)} calls of {BATCH:,}: {rate:.0f} memories/s "
        f"({rate / single_rate:.0f}x one at a time); per call p50 {pct(batch_s, 50):.2f} s, "
        f"best {min(batch_s):.2f} s"
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
    singles, batches, searches = args.singles, args.batches, args.searches
    ferretdb = FerretDB().start()
    model = start_model()
    results = {}
    try:
        for name, extra, source in plans:
            loom = start_loom(
                ferretdb, model, f"bench_memory_writes_{len(results)}", source=source, **extra
            )
            try:
                results[name] = await measure(loom.port, singles, batches, searches)
            finally:
                loom.stop()
    finally:
        model.stop()
        ferretdb.stop()

    from service.memory.embeddings import OnnxMiniLM

    embedder = OnnxMiniLM(MODEL_DIR)
    texts = facts(BATCH, 999)
    embedder.embed_sync(texts[:64])
    t = time.perf_counter()
    embedder.embed_sync(texts)
    embed_rate = BATCH / (time.perf_counter() - t)
    embedder.close()

    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    for name, result in results.items():
        report(name, singles, result)
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
