"""Memory recall on LoCoMo through Loom's public API: ``python -m bench.memory_api``.

What a user of the API can do, and nothing more: a fresh assistant per
conversation; every turn written as a memory of one user with the content
``"[session date] speaker: text"`` (plus ``"[shares a photo: caption]"``)
and its ``dia_id`` in the metadata, through ``BatchCreateMemories`` (one
call per session); each question asked with ``SearchMemories`` (the user's
scope, limit 50); the evidence turns looked for in the results by their
``dia_id``. Recall@k and MRR as ``bench.memory`` counts them, per category,
conversations 1-2 (where parameters are chosen) and 3-10 (held out) apart.

Two ways of writing, side by side: ``sequential`` (each session's batch
says its memories are consecutive turns, so each is indexed with its
neighbours) and ``plain`` (the same memories with no order, as one
``CreateMemory`` per turn would write them). Loom, FerretDB and the
scripted model each run as their own process; Loom uses embedded Chroma
and all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from itertools import groupby
from pathlib import Path

from grpc import aio

from bench.common import FerretDB, machine, pct, start_loom, start_model
from bench.locomo import Conversation, load
from bench.memory import DEPTH, DEV, Scores, _beside_repo, print_scores, turn_text
from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, memory_pb2, memory_pb2_grpc

METADATA = (("x-api-key", "bench-key"),)
WAYS = ("sequential", "plain")


async def write(
    memory: memory_pb2_grpc.MemoryServiceStub,
    assistant_id: str,
    user_id: str,
    conv: Conversation,
    sequential: bool,
) -> None:
    """Every turn of ``conv`` as a memory of ``user_id``, a call per session."""
    for _, turns in groupby(conv.turns, key=lambda t: t.session):
        batch = [
            memory_pb2.Memory(
                content=turn_text(t, date=True), user_id=user_id, metadata={"dia_id": t.dia_id}
            )
            for t in turns
        ]
        await memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                assistant_id=assistant_id, memories=batch, sequential=sequential
            ),
            metadata=METADATA,
            timeout=600,
        )


async def measure(
    port: int, convs: list[Conversation], sequential: bool, dev: int
) -> tuple[Scores, Scores, list[float]]:
    """Scores over every conversation, over the held-out ones (all but
    the first ``dev``), and the seconds of each SearchMemories call."""
    scores, held, latency = Scores(), Scores(), []
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        assistants = assistant_pb2_grpc.AssistantServiceStub(channel)
        memory = memory_pb2_grpc.MemoryServiceStub(channel)
        for n, conv in enumerate(convs):
            created = await assistants.CreateAssistant(
                assistant_pb2.CreateAssistantRequest(
                    assistant=assistant_pb2.Assistant(name=f"locomo-{conv.sample_id}")
                ),
                metadata=METADATA,
            )
            assistant_id = created.assistant.assistant_id
            user_id = f"user-{conv.sample_id}"
            await write(memory, assistant_id, user_id, conv, sequential)
            for q in conv.questions:
                if not q.evidence:
                    continue
                start = time.perf_counter()
                found = await memory.SearchMemories(
                    memory_pb2.SearchMemoriesRequest(
                        assistant_id=assistant_id, query=q.question, user_id=user_id, limit=DEPTH
                    ),
                    metadata=METADATA,
                )
                latency.append(time.perf_counter() - start)
                ranked = [r.memory.metadata.get("dia_id", "") for r in found.results]
                scores.add(q.category, ranked, q.evidence)
                if n >= dev:
                    held.add(q.category, ranked, q.evidence)
            print(f"  {conv.sample_id}: {len(conv.turns)} turns", file=sys.stderr)
    return scores, held, latency


async def run(convs: list[Conversation], ways: tuple[str, ...], dev: int) -> None:
    ferretdb = FerretDB().start()
    model = start_model()
    results = {}
    try:
        for way in ways:
            loom = start_loom(ferretdb, model, f"bench_memory_api_{way}")
            try:
                results[way] = await measure(loom.port, convs, way == "sequential", dev)
            finally:
                loom.stop()
    finally:
        model.stop()
        ferretdb.stop()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"LoCoMo through the API, conversations {', '.join(c.sample_id for c in convs)}")
    for way, (scores, held, latency) in results.items():
        ms = [s * 1000 for s in latency]
        print_scores(
            f"{way} BatchCreateMemories, SearchMemories limit {DEPTH} "
            f"(p50 {pct(ms, 50):.1f} ms, p95 {pct(ms, 95):.1f} ms a search)",
            scores,
            held if 0 < dev < len(convs) else None,
        )


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("LOOM_LOCOMO_DATA") or _beside_repo("data/locomo10.json"),
        help="locomo10.json (default: LOOM_LOCOMO_DATA, else ../shared/data beside the repo)",
    )
    parser.add_argument("--quick", action="store_true", help="conversations 1-2 only")
    parser.add_argument("--way", choices=WAYS, help="one way of writing only")
    parser.add_argument(
        "--held-out", type=int, default=0, metavar="N", help="the first N held-out ones only"
    )
    args = parser.parse_args()
    if not args.data:
        parser.error("--data (or LOOM_LOCOMO_DATA) is needed")
    convs = load(Path(args.data))
    if args.quick:
        convs = convs[:DEV]
    elif args.held_out:
        convs = convs[DEV : DEV + args.held_out]
    dev = 0 if args.held_out and not args.quick else DEV
    asyncio.run(run(convs, (args.way,) if args.way else WAYS, dev))


if __name__ == "__main__":
    main()
