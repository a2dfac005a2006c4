"""A replica's search caches at scale: ``python -m bench.memory_scale``
(``make bench-memory-scale``).

What it measures. ``--assistants`` assistants of ``--memories`` memories
each (120 x 1,000 by default: 1,000 x 1,000 takes hours to fill on 2
cores), and one of ``--big`` (10,000) memories, are written into a ``chroma run``
server (its own process, so its memory is not the replica's) with the
memory counter on FerretDB, as Loom runs them. Then, for each cache bound
(``--bounds``, values of ``LOOM_MEMORY_CACHE_MB``: the default, 512, and
smaller ones), a fresh
process stands for one replica: it searches every assistant in turn (each
search misses its cache, builds it and may evict others) and reports its
RSS (before, peak, after) and what its caches hold; then the big
assistant's search when its cache is cold (dropped before each run: what
a replica pays once its cache is full) beside the same search warm.

How. Through the in-process index (``ChromaMemoryIndex``), not the public
API: ``BatchCreateMemories`` on this machine fills about a thousand
memories a second at best, an hour for a million. Embeddings are the
scripted model's (``tests/scripted_llm.embedding_of``: hashed words, 384
dimensions, what its ``/v1/embeddings`` answers), to take embedding out of
both the fill and the search. Texts are 8-16 words drawn from a fixed
vocabulary of 5,000 made-up words (seeded), spread over 10 users per
assistant; every search is in one user's scope (the cache holds the whole
assistant regardless).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, pct
from service.memory._codec import where
from service.memory.collection import collection_name
from service.memory.embeddings import Vectors
from service.memory.index import ChromaMemoryIndex, open_index
from service.memory.ports import MemoryRecord
from service.store import MongoStore, connect
from tests.scripted_llm import EMBEDDING_DIM, embedding_of
from tests.support.chroma import ChromaServer
from tests.support.ferretdb import FerretDB

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

TENANT = "bench-scale"
DATABASE = "loom_bench_scale"
DEFAULT_MB = 512  # LOOM_MEMORY_CACHE_MB's default (service/config.py)
USERS = 10
BIG = "asst_big"
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]


class HashedEmbedder:
    """The scripted model's embeddings, computed in-process."""

    model_name = "scripted-hashed-words"
    dim = EMBEDDING_DIM

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray([embedding_of(t) for t in texts], dtype=np.float32)

    async def aclose(self) -> None:
        pass


def vocabulary() -> list[str]:
    rng = random.Random(10)  # noqa: S311 - sample text, not secrets
    words: set[str] = set()
    while len(words) < 5000:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def memories(assistant: str, count: int, words: list[str]) -> list[MemoryRecord]:
    rng = random.Random(assistant)  # noqa: S311
    now = datetime.now(UTC)
    return [
        MemoryRecord(
            memory_id=f"m_{assistant}_{i}",
            tenant=TENANT,
            assistant_id=assistant,
            user_id=f"user_{i % USERS}",
            text=" ".join(rng.choices(words, k=rng.randint(8, 16))) + ".",
            kind="fact",
            create_time=now,
            update_time=now,
        )
        for i in range(count)
    ]


def rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_replica(chroma_url: str, store: MongoStore, cache_mb: int) -> ChromaMemoryIndex:
    return open_index(
        Path("/nonexistent"),
        chroma_url,
        HashedEmbedder(),
        versions=store.memory_versions,
        max_cached_bytes=cache_mb * 2**20,
    )


async def fill(args: argparse.Namespace, chroma_url: str, mongo_uri: str) -> dict[str, float]:
    """Write every assistant's memories, one upsert per assistant."""
    words = vocabulary()
    store = connect(mongo_uri, DATABASE)
    index = open_replica(chroma_url, store, 1)
    began = time.perf_counter()
    try:
        for a in range(args.assistants):
            await index.upsert(memories(f"asst_{a:04d}", args.memories, words))
            if (a + 1) % 50 == 0:
                print(
                    f"  filled {a + 1} assistants, {time.perf_counter() - began:.0f} s", flush=True
                )
        small = time.perf_counter() - began
        await index.upsert(memories(BIG, args.big, words))
    finally:
        await index.close()
        await store.close()
    return {"fill_s": small, "fill_big_s": time.perf_counter() - began - small}


def _query(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.choices(words, k=3))


async def _search(index: ChromaMemoryIndex, assistant: str, query: str, user: str) -> float:
    began = time.perf_counter()
    await index.search(TENANT, assistant, query, user_id=user, limit=10)
    return (time.perf_counter() - began) * 1000


async def replica(args: argparse.Namespace) -> dict[str, Any]:
    """One replica's run (in its own process): the sweep, then the big one."""
    words = vocabulary()
    rng = random.Random(7)  # noqa: S311
    store = connect(args.mongo, DATABASE)
    index = open_replica(args.chroma, store, args.cache_mb)
    out: dict[str, Any] = {"cache_mb": args.cache_mb}
    try:
        # One search of a missing assistant first: imports and connections warm.
        await _search(index, "asst_none", "warm up", "user_0")
        out["rss_before_mib"] = rss_kb() / 1024
        sweep: list[float] = []
        peak = 0
        for a in range(args.assistants):
            user = f"user_{a % USERS}"
            sweep.append(await _search(index, f"asst_{a:04d}", _query(rng, words), user))
            peak = max(peak, rss_kb())
        out |= {
            "sweep_p50_ms": pct(sweep, 50),
            "sweep_p95_ms": pct(sweep, 95),
            "rss_peak_mib": peak / 1024,
            "rss_after_mib": rss_kb() / 1024,
            "cached_mib": index.cached_bytes() / 2**20,
            "cached_per_memory_b": index.cached_bytes() / max(1, _cached_memories(index)),
        }
        out |= chroma_search(index, rng, words, args.runs)
        cold: list[float] = []
        warm: list[float] = []
        for _ in range(args.runs):
            index.forget(TENANT, BIG)
            cold.append(await _search(index, BIG, _query(rng, words), "user_1"))
            warm.append(await _search(index, BIG, _query(rng, words), "user_1"))
        out |= {
            "cold_p50_ms": pct(cold, 50),
            "cold_p95_ms": pct(cold, 95),
            "warm_p50_ms": pct(warm, 50),
            "warm_p95_ms": pct(warm, 95),
            "rss_hwm_mib": rss_kb("VmHWM") / 1024,
        }
    finally:
        await index.close()
        await store.close()
    return out


def chroma_search(
    index: ChromaMemoryIndex, rng: random.Random, words: list[str], runs: int
) -> dict[str, float]:
    """The big assistant searched by Chroma's own server instead (its
    nearest-neighbour query, dense only, no BM25): in one user's scope (a
    ``where`` filter, as Loom's scoping needs) and unfiltered."""
    collection = index.client.get_collection(collection_name(TENANT, BIG))
    out: dict[str, float] = {}
    for label, scoped in (("chroma_scoped", True), ("chroma_unfiltered", False)):
        took: list[float] = []
        for _ in range(runs):
            vector = embedding_of(_query(rng, words))
            began = time.perf_counter()
            collection.query(
                query_embeddings=[vector],
                n_results=10,
                where=where(TENANT, BIG, user_id="user_1") if scoped else None,
                include=["documents", "metadatas", "distances"],
            )
            took.append((time.perf_counter() - began) * 1000)
        out |= {f"{label}_p50_ms": pct(took, 50), f"{label}_p95_ms": pct(took, 95)}
    return out


def _cached_memories(index: ChromaMemoryIndex) -> int:
    # The bench reads what a replica holds, which the index keeps to itself.
    caches = index._caches
    with caches._lock:
        return sum(len(entry) for entry in caches._entries.values())


def run_replica(args: argparse.Namespace, chroma_url: str, mongo_uri: str, mb: int) -> Any:
    command = [
        sys.executable,
        "-m",
        "bench.memory_scale",
        "--replica",
        "--chroma",
        chroma_url,
        "--mongo",
        mongo_uri,
        "--cache-mb",
        str(mb),
        "--assistants",
        str(args.assistants),
        "--runs",
        str(args.runs),
    ]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_of(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(
    args: argparse.Namespace, filled: dict[str, float], runs: list[Any], chroma: float
) -> None:
    total = args.assistants * args.memories
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end")
    print(
        f"filled {args.assistants} assistants x {args.memories} memories ({total:,}) in "
        f"{filled['fill_s']:.0f} s ({total / filled['fill_s']:,.0f}/s) and one of "
        f"{args.big:,} in {filled['fill_big_s']:.0f} s; chroma run RSS {chroma:.0f} MiB"
    )
    for r in runs:
        print(
            f"LOOM_MEMORY_CACHE_MB={r['cache_mb']}: RSS before {r['rss_before_mib']:.0f} MiB, "
            f"peak {r['rss_peak_mib']:.0f} MiB, after the sweep {r['rss_after_mib']:.0f} MiB; "
            f"caches hold {r['cached_mib']:.0f} MiB ({r['cached_per_memory_b']:,.0f} B a memory); "
            f"each sweep search (a miss of {args.memories} memories) p50 "
            f"{r['sweep_p50_ms']:.0f} ms p95 {r['sweep_p95_ms']:.0f} ms"
        )
        print(
            f"  {args.big:,} memories: cold search p50 {r['cold_p50_ms']:.0f} ms "
            f"p95 {r['cold_p95_ms']:.0f} ms; warm p50 {r['warm_p50_ms']:.1f} ms "
            f"p95 {r['warm_p95_ms']:.1f} ms ({args.runs} runs each); "
            f"VmHWM {r['rss_hwm_mib']:.0f} MiB"
        )
        print(
            f"  the same by Chroma's server (query, dense only): in a user's scope p50 "
            f"{r['chroma_scoped_p50_ms']:.0f} ms p95 {r['chroma_scoped_p95_ms']:.0f} ms; "
            f"unfiltered p50 {r['chroma_unfiltered_p50_ms']:.0f} ms "
            f"p95 {r['chroma_unfiltered_p95_ms']:.0f} ms"
        )
        print("  " + json.dumps(r))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assistants", type=int, default=120)
    parser.add_argument("--memories", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10_000)
    parser.add_argument(
        "--bounds", default=f"{DEFAULT_MB},64", help="LOOM_MEMORY_CACHE_MB values, comma-separated"
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--replica", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chroma", help=argparse.SUPPRESS)
    parser.add_argument("--mongo", help=argparse.SUPPRESS)
    parser.add_argument("--cache-mb", type=int, default=DEFAULT_MB, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replica:
        print(json.dumps(asyncio.run(replica(args))))
        return
    database = FerretDB().start()
    chroma = ChromaServer().start()
    try:
        filled = asyncio.run(fill(args, chroma.url, database.uri))
        runs = [
            run_replica(args, chroma.url, database.uri, mb)
            for mb in map(int, args.bounds.split(","))
        ]
        assert chroma.proc is not None
        report(args, filled, runs, _rss_of(chroma.proc.pid))
    finally:
        chroma.stop()
        database.stop()


if __name__ == "__main__":
    main()
