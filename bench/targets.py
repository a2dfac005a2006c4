"""Issue 12's targets, each beside its baseline measured in the same run, and
the chart of throughput and time to first delta against concurrency.

Three sides share one scripted model: Loom with memory OFF, Loom with memory
AUTO (an assistant with 10,000 assistant-wide memories, so in every user's
scope; a user per stream), each Loom with its own FerretDB (over the local
database of ``LOOM_LOCAL_DB``), and a plain async httpx client streaming
straight from the model. Each round takes interleaved time-to-first-delta
samples on one stream (Loom's added time is Loom minus direct per pair),
then a window per side at each concurrency (1, 4, 16, 64 streams, each on
its own thread), the order rotating. CPU per message is Loom's, FerretDB's
and PostgreSQL's over the window; for AUTO, counted until Loom is idle again
after it, so the extraction jobs the window queued are in it.

    python -m bench.targets [--rounds 2] [--seconds 8] [--chart docs/bench-concurrency.png]
    python -m bench.targets --rss 600     # RSS of Loom over 10 minutes at 16 streams
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc
import httpx
from grpc import aio

from bench.ab import METADATA, Direct, load
from bench.common import (
    MODEL_DIR,
    FerretDB,
    Process,
    machine,
    pct,
    process_cpu_seconds,
    start_loom,
    start_model,
)
from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, thread_pb2, thread_pb2_grpc
from service.core import ids
from service.core.models import Assistant, MemoryMode
from service.memory.embeddings import OnnxMiniLM
from service.memory.index import open_index
from service.memory.ports import MemoryRecord
from service.store.mongo import connect

LEVELS = (1, 4, 16, 64)
WORDS = [
    "sailing",
    "hiking",
    "Porto",
    "Lisbon",
    "peanuts",
    "coffee",
    "tea",
    "piano",
    "guitar",
    "chess",
    "football",
    "tennis",
    "running",
    "cycling",
    "garden",
    "roses",
    "tulips",
    "sister",
    "brother",
    "daughter",
    "son",
    "cat",
    "dog",
    "parrot",
    "Monday",
    "Friday",
    "summer",
    "winter",
    "spring",
    "autumn",
    "vegan",
    "spicy",
    "sushi",
    "pasta",
    "museum",
    "concert",
    "novel",
    "poetry",
    "physics",
    "history",
    "nurse",
    "teacher",
    "engineer",
    "painter",
    "bakery",
    "market",
    "river",
]


@dataclass
class Target:
    """One side: a Loom (memory OFF or AUTO) or the direct client."""

    name: str
    loom: Process | None = None
    db: FerretDB | None = None
    stub: thread_pb2_grpc.ThreadServiceStub | None = None
    assistant: str = ""
    threads: list[str] = field(default_factory=list)
    solo: list[float] = field(default_factory=list)
    ttfd: dict[int, list[float]] = field(default_factory=dict)
    rate: dict[int, list[float]] = field(default_factory=dict)
    cpu: dict[int, list[float]] = field(default_factory=dict)
    errors: int = 0

    def cpu_seconds(self) -> float:
        if self.loom is None or self.db is None or self.db.proc is None:
            return 0.0
        total = process_cpu_seconds(self.loom.proc.pid) + process_cpu_seconds(self.db.proc.pid)
        return total + (self.db.postgres.cpu_seconds() if self.db.postgres else 0.0)


async def seed_memories(db: FerretDB, data_dir: Path, database: str, count: int) -> str:
    """An assistant with memory AUTO and ``count`` assistant-wide memories,
    written through Loom's own index before Loom starts; its id."""
    store = connect(db.uri, database)
    t = datetime.now(UTC)
    assistant = Assistant(
        assistant_id=ids.new_id(ids.ASSISTANT),
        tenant="dev",
        name="bench auto",
        instructions="Be brief.",
        memory_mode=MemoryMode.AUTO,
        create_time=t,
        update_time=t,
    )
    await store.assistants.insert(assistant)
    index = open_index(data_dir, None, OnnxMiniLM(MODEL_DIR), versions=store.memory_versions)
    rng = random.Random(12)  # noqa: S311 - texts to index, not secrets
    try:
        for start in range(0, count, 256):
            batch = [
                MemoryRecord(
                    memory_id=ids.new_id(ids.MEMORY),
                    tenant="dev",
                    assistant_id=assistant.assistant_id,
                    user_id="",
                    text=f"Note {i}: " + " ".join(rng.choices(WORDS, k=8)),
                    kind="manual",
                    create_time=t,
                    update_time=t,
                )
                for i in range(start, min(start + 256, count))
            ]
            await index.upsert(batch)
    finally:
        await index.close()
        await store.close()
    return assistant.assistant_id


async def _send(side: Target, req: thread_pb2.SendMessageRequest) -> tuple[float, str]:
    assert side.stub is not None
    start = time.perf_counter()
    first = 0.0
    thread_id = ""
    # A bound, not a measurement: a stalled stream counts as an error.
    async for event in side.stub.SendMessage(req, metadata=METADATA, timeout=120):
        if event.HasField("started"):
            thread_id = event.started.thread_id
        if event.HasField("delta") and not first:
            first = time.perf_counter() - start
    return first, thread_id


async def _open(side: Target, channel: aio.Channel, memory: int) -> None:
    side.stub = thread_pb2_grpc.ThreadServiceStub(channel)
    if not side.assistant:
        made = await assistant_pb2_grpc.AssistantServiceStub(channel).CreateAssistant(
            assistant_pb2.CreateAssistantRequest(
                assistant=assistant_pb2.Assistant(
                    name="bench",
                    instructions="Be brief.",
                    memory_mode=memory,  # type: ignore[arg-type]
                )
            ),
            metadata=METADATA,
        )
        side.assistant = made.assistant.assistant_id
    for i in range(max(LEVELS) + 1):
        req = thread_pb2.SendMessageRequest(
            content=f"Hello, I like sailing ({i}).", assistant_id=side.assistant, user_id=f"u{i}"
        )
        side.threads.append((await _send(side, req))[1])


async def _idle(cpu: Callable[[], float], within: float = 60.0) -> None:
    """Wait until ``cpu`` (seconds) grows by under 5% of a core per half second."""
    deadline = time.monotonic() + within
    last = cpu()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = cpu()
        if now - last < 0.025:
            return
        last = now


async def _window(side: Target, direct: Direct, streams: int, seconds: float) -> None:
    ttfd: list[float] = []
    before = side.cpu_seconds()
    stop_at = time.perf_counter() + seconds
    start = time.perf_counter()

    async def worker(i: int) -> None:
        while time.perf_counter() < stop_at:
            try:
                if side.loom is None:
                    ttfd.append(1000 * await direct.once())
                else:
                    req = thread_pb2.SendMessageRequest(content="ping", thread_id=side.threads[i])
                    ttfd.append(1000 * (await _send(side, req))[0])
            except (grpc.RpcError, httpx.HTTPError):
                side.errors += 1

    await asyncio.gather(*(worker(i + 1) for i in range(streams)))
    elapsed = time.perf_counter() - start
    if side.name == "AUTO":
        await _idle(side.cpu_seconds)  # the extraction jobs the window queued
    side.rate.setdefault(streams, []).append(len(ttfd) / elapsed)
    side.ttfd.setdefault(streams, []).extend(ttfd)
    if side.loom is not None:
        used = side.cpu_seconds() - before
        side.cpu.setdefault(streams, []).append(1000 * used / max(len(ttfd), 1))


async def _solo(sides: list[Target], direct: Direct, samples: int, shift: int) -> None:
    for i in range(samples):
        k = (i + shift) % len(sides)
        for side in sides[k:] + sides[:k]:
            if side.loom is None:
                side.solo.append(1000 * await direct.once())
            else:
                req = thread_pb2.SendMessageRequest(content="ping", thread_id=side.threads[0])
                side.solo.append(1000 * (await _send(side, req))[0])


def _added(side: Target, direct: Target) -> list[float]:
    return [a - b for a, b in zip(side.solo, direct.solo, strict=True)]


def report(sides: list[Target], loads: list[float]) -> None:
    off, auto, direct = sides
    print(f"machine: {machine()}")
    print(
        f"load average (1 min): median {statistics.median(loads):.1f}, "
        f"range {min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"{'':<8}{'streams':>8}{'msg/s':>9}{'ttfd p50':>10}{'p95':>9}{'CPU ms/msg':>12}")
    for side in sides:
        for n in LEVELS:
            cpu = f"{statistics.median(side.cpu[n]):>12.1f}" if side.cpu.get(n) else f"{'':>12}"
            print(
                f"{side.name:<8}{n:>8}{statistics.median(side.rate[n]):>9.1f}"
                f"{pct(side.ttfd[n], 50):>10.1f}{pct(side.ttfd[n], 95):>9.1f}{cpu}"
            )
    ratio = statistics.median(off.rate[64]) / statistics.median(direct.rate[64])
    auto_ratio = statistics.median(auto.rate[64]) / statistics.median(off.rate[64])
    a_off, a_auto = _added(off, direct), _added(auto, direct)
    checks = [
        ("throughput, 64 streams, OFF / direct", f"{ratio:.0%}", ">= 40%", ratio >= 0.4),
        ("errors, OFF", f"{off.errors}", "0", off.errors == 0),
        ("added TTFD OFF p50", f"{pct(a_off, 50):.2f} ms", "<= 3 ms", pct(a_off, 50) <= 3),
        ("added TTFD OFF p95", f"{pct(a_off, 95):.2f} ms", "<= 6 ms", pct(a_off, 95) <= 6),
        (
            "added TTFD AUTO (10k) p50",
            f"{pct(a_auto, 50):.2f} ms",
            "<= 15 ms",
            pct(a_auto, 50) <= 15,
        ),
        ("throughput, 64 streams, AUTO / OFF", f"{auto_ratio:.0%}", ">= 50%", auto_ratio >= 0.5),
        (
            "CPU per message OFF (Loom + database)",
            f"{statistics.median(off.cpu[64]):.1f} ms",
            "toward 8 ms",
            statistics.median(off.cpu[64]) <= 8,
        ),
        (
            "CPU per message AUTO (jobs included)",
            f"{statistics.median(auto.cpu[64]):.1f} ms",
            "toward 20 ms",
            statistics.median(auto.cpu[64]) <= 20,
        ),
    ]
    print(
        f"direct to the model, one stream: ttfd p50 {pct(direct.solo, 50):.2f} ms, "
        f"p95 {pct(direct.solo, 95):.2f} ms ({len(direct.solo)} samples)"
    )
    for name, got, want, ok in checks:
        print(f"  {'met   ' if ok else 'MISSED'} {name}: {got} (target {want})")


def chart(sides: list[Target], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"OFF": "Loom, memory OFF", "AUTO": "Loom, memory AUTO (10k)", "direct": "direct"}
    for side in sides:
        rates = [statistics.median(side.rate[n]) for n in LEVELS]
        ttfd = [pct(side.ttfd[n], 50) for n in LEVELS]
        left.plot(LEVELS, rates, marker="o", label=labels[side.name])
        right.plot(LEVELS, ttfd, marker="o", label=labels[side.name])
    for ax, ylabel in ((left, "messages / s"), (right, "time to first delta p50, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(LEVELS, [str(n) for n in LEVELS])
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    right.set_yscale("log")
    left.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _rss_mib(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def rss(seconds: float) -> None:
    """Loom's RSS every 10 s over ``seconds`` at 16 streams, memory OFF."""
    db = FerretDB().start()
    model = start_model()
    loom = start_loom(db, model, "bench_rss")
    side = Target("OFF", loom, db)
    samples: list[tuple[float, float]] = []
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            await _open(side, channel, 3)
            start = time.monotonic()
            direct = Direct(model.port)
            while time.monotonic() - start < seconds:
                await _window(side, direct, 16, 10.0)
                samples.append((time.monotonic() - start, _rss_mib(loom.proc.pid)))
                print(f"  {samples[-1][0]:6.0f} s  RSS {samples[-1][1]:7.1f} MiB", flush=True)
    finally:
        loom.stop()
        model.stop()
        db.stop()
    first = statistics.median(r for _, r in samples[:3])
    last = statistics.median(r for _, r in samples[-3:])
    print(f"machine: {machine()}; {sum(side.rate[16]) * 10:.0f} messages")
    print(
        f"RSS, median of the first three samples {first:.1f} MiB, of the last three "
        f"{last:.1f} MiB ({last - first:+.1f} MiB), max {max(r for _, r in samples):.1f} MiB"
    )


async def run(args: argparse.Namespace) -> None:
    model = start_model()
    off_db, auto_db = FerretDB().start(), FerretDB().start()
    auto_dir = Path(tempfile.mkdtemp(prefix="loom-bench-auto-"))
    started = time.monotonic()
    assistant = await seed_memories(auto_db, auto_dir, "bench_auto", args.memories)
    print(f"seeded {args.memories} memories in {time.monotonic() - started:.0f} s", flush=True)
    off = Target("OFF", start_loom(off_db, model, "bench_off"), off_db)
    auto = Target(
        "AUTO",
        start_loom(auto_db, model, "bench_auto", data_dir=auto_dir),
        auto_db,
        assistant=assistant,
    )
    sides = [off, auto, Target("direct")]
    loads: list[float] = []
    direct = Direct(model.port)
    try:
        async with (
            aio.insecure_channel(f"127.0.0.1:{off.loom.port}") as c_off,  # type: ignore[union-attr]
            aio.insecure_channel(f"127.0.0.1:{auto.loom.port}") as c_auto,  # type: ignore[union-attr]
        ):
            await _open(off, c_off, 3)
            await _open(auto, c_auto, 1)
            await _solo(sides, direct, 10, 0)  # warm every path
            for side in sides:
                side.solo.clear()
            for r in range(args.rounds):
                loads.append(load())
                await _solo(sides, direct, args.samples, r)
                for n in LEVELS:
                    k = (r + n) % len(sides)
                    for side in sides[k:] + sides[:k]:
                        await _window(side, direct, n, args.seconds)
                print(f"round {r + 1} of {args.rounds} done", flush=True)
    finally:
        await direct.client.aclose()
        for side in (off, auto):
            if side.loom is not None:
                side.loom.stop()
        for db in (off_db, auto_db):
            db.stop()
        model.stop()
    report(sides, loads)
    if args.chart:
        title = f"{machine()}; load average {statistics.median(loads):.1f}"
        chart(sides, Path(args.chart), title)
        print(f"chart: {args.chart}")


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # SIGTERM (timeout, a kill) stops the run as Ctrl-C does: the processes
    # it started are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--chart", default="")
    parser.add_argument("--rss", type=float, default=0.0, help="seconds of the RSS run instead")
    args = parser.parse_args()
    asyncio.run(rss(args.rss) if args.rss else run(args))


if __name__ == "__main__":
    main()
