"""The soak (``make soak``): a fleet of replicas (tests/support/fleet.py)
under concurrent streams against the scripted model, a replica SIGKILLed
and restarted in the middle and the database restarted once; then an audit
of what the database holds. Prints streams acknowledged, errors by code,
replies lost and duplicated (both must be 0), time to first delta, each
replica's peak RSS and the machine, first for the same load without
faults (the baseline, measured in the same run).

    python -m bench.soak [--replicas 3 --streams 200 --seconds 60 --token-delay 0.02]

Acknowledged means the caller read ``completed``. The audit then wants, for
every acknowledged reply, its user message stored once and the reply stored
once, COMPLETE, with the text the caller received; no message left
IN_PROGRESS, no thread left marked mid-reply, no live lease, no job left
running. Each stream sends a ``request_id``; a call that fails is not sent
again (the errors are counted, not hidden by retries)."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from grpc import aio
from pymongo import MongoClient

from bench.common import machine
from generated.loom.v1 import thread_pb2, thread_pb2_grpc
from tests.scripted_llm import Reply
from tests.support.fleet import DEV_KEY, Fleet

MD = (("x-api-key", DEV_KEY),)
WORDS = 30  # words in each scripted reply
SEPARATOR = "\x1f"  # service/store/scoped.py: the tenant and the id in _id


@dataclass(frozen=True, slots=True)
class Ack:
    """A reply whose caller read ``completed``."""

    request_id: str
    reply_id: str
    text: str
    at: float  # seconds into the run


@dataclass(slots=True)
class Outcome:
    """What the callers saw."""

    acks: list[Ack] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_delta: list[float] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)
    # When each fault happened, seconds into the run ("kill", "replica back").
    marks: dict[str, float] = field(default_factory=dict)

    def since_start(self) -> float:
        return time.monotonic() - self.start


@dataclass(slots=True)
class Audit:
    """What the database holds afterwards, against what callers saw."""

    lost: int = 0
    duplicated: int = 0
    in_progress: int = 0
    mid_reply_threads: int = 0
    live_leases: int = 0
    running_jobs: int = 0


async def _exchange(
    stub: thread_pb2_grpc.ThreadServiceStub, thread_id: str, outcome: Outcome
) -> str:
    """One message and its streamed reply; the thread it went to."""
    request_id = uuid.uuid4().hex
    started = time.monotonic()
    call = stub.SendMessage(
        thread_pb2.SendMessageRequest(content="soak", thread_id=thread_id, request_id=request_id),
        metadata=MD,
        timeout=60,
    )
    text: list[str] = []
    reply_id = ""
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "started":
                thread_id, reply_id = event.started.thread_id, event.started.assistant_message_id
            elif kind == "delta":
                if not text:
                    outcome.first_delta.append(time.monotonic() - started)
                text.append(event.delta.text)
            elif kind == "completed":
                outcome.acks.append(Ack(request_id, reply_id, "".join(text), outcome.since_start()))
                call.cancel()  # read no further, as a chat client does
                break
    except aio.AioRpcError as exc:
        outcome.errors[exc.code().name] += 1
        await asyncio.sleep(0.5)  # a caller told to wait does, a little
    return thread_id


async def _caller(channel: aio.Channel, until: float, outcome: Outcome, seed: int) -> None:
    """One caller: its own thread, a message after each reply, until ``until``."""
    stub = thread_pb2_grpc.ThreadServiceStub(channel)
    rng = random.Random(seed)  # noqa: S311 - a fixed seed, not a secret
    await asyncio.sleep(rng.random())  # callers do not all start at once
    thread_id = ""
    while time.monotonic() < until:
        thread_id = await _exchange(stub, thread_id, outcome)


async def _faults(fleet: Fleet, seconds: float, outcome: Outcome, kill: bool, db: bool) -> None:
    """A replica SIGKILLed and restarted at a third of the run, the database
    restarted at two thirds."""
    start = time.monotonic()
    if kill:
        await asyncio.sleep(seconds / 3)
        victim = fleet.size - 1
        fleet.kill(victim)
        outcome.marks["kill"] = outcome.since_start()
        outcome.faults.append(f"{time.monotonic() - start:.0f}s SIGKILL replica {victim}")
        state = "left down"
        for attempt in range(3):  # as a supervisor would, if a start fails under load
            try:
                await asyncio.to_thread(fleet.restart, victim)
                outcome.marks["replica back"] = outcome.since_start()
                state = "serving again"
                break
            except AssertionError as exc:
                why = str(exc).splitlines()[-1][:120]
                outcome.faults.append(f"restart {attempt + 1} of replica {victim} failed: {why}")
        outcome.faults.append(f"{time.monotonic() - start:.0f}s replica {victim} {state}")
    if db:
        await asyncio.sleep(max(0.0, start + 2 * seconds / 3 - time.monotonic()))
        fleet.stop_database()
        outcome.faults.append(f"{time.monotonic() - start:.0f}s database killed")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(fleet.start_database)
        outcome.faults.append(f"{time.monotonic() - start:.0f}s database back")


def _rss_peak_kb(pid: int) -> int:
    """The process's peak resident set (VmHWM), kB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


async def _watch_rss(fleet: Fleet, peaks: list[int], stop: asyncio.Event) -> None:
    """Keep each replica's peak RSS (over its restarts), sampled twice a second."""
    while not stop.is_set():
        for i, proc in enumerate(fleet.replicas):
            if proc is not None:
                peaks[i] = max(peaks[i], _rss_peak_kb(proc.pid))
        await asyncio.sleep(0.5)


async def drive(
    fleet: Fleet, streams: int, seconds: float, seed: int, *, kill: bool, db: bool
) -> tuple[Outcome, list[int]]:
    """Run the callers and the faults; what the callers saw and each
    replica's peak RSS (kB)."""
    outcome = Outcome()
    peaks = [0] * fleet.size
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_rss(fleet, peaks, stop))
    until = time.monotonic() + seconds
    outcome.start = time.monotonic()
    async with fleet.aio_channel() as channel:
        faults = asyncio.create_task(_faults(fleet, seconds, outcome, kill, db))
        await asyncio.gather(*(_caller(channel, until, outcome, seed + i) for i in range(streams)))
        await faults
    stop.set()
    await watcher
    return outcome, peaks


def _object_id(stored: str) -> str:
    return stored.rpartition(SEPARATOR)[2]


def audit(fleet: Fleet, outcome: Outcome, settle: float = 0.0) -> Audit:
    """Compare the database with what the callers saw (after ``settle``
    seconds, for leases of replicas killed mid-reply to lapse)."""
    time.sleep(settle)
    found = Audit()
    # A database that stopped answering fails the audit rather than hanging it.
    timeouts = {"serverSelectionTimeoutMS": 10_000, "socketTimeoutMS": 120_000}
    with MongoClient(fleet.ferretdb.uri, **timeouts) as client:
        db = client[fleet.database_name]
        fields = {"role": 1, "status": 1, "content": 1, "request_id": 1}
        docs: list[dict[str, Any]] = list(db["messages"].find({}, fields))
        by_id = {_object_id(d["_id"]): d for d in docs}
        per_request: Counter[tuple[str, str]] = Counter(
            (d["request_id"], d["role"]) for d in docs if d.get("request_id")
        )
        found.duplicated = sum(1 for n in per_request.values() if n > 1)
        for ack in outcome.acks:
            reply = by_id.get(ack.reply_id)
            stored = per_request[(ack.request_id, "user")] == 1
            if (
                not stored
                or reply is None
                or reply["status"] != "complete"
                or reply["content"] != ack.text
            ):
                found.lost += 1
        found.in_progress = sum(1 for d in docs if d["status"] == "in_progress")
        found.mid_reply_threads = db["threads"].count_documents({"replying": True})
        now = datetime.now(UTC)
        found.live_leases = db["leases"].count_documents({"expires": {"$gt": now}})
        found.running_jobs = db["jobs"].count_documents({"state": "running"})
    return found


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


def _timeline(outcome: Outcome, seconds: float, step: float = 10.0) -> str:
    """Replies acknowledged in each ``step`` seconds of the run, and after
    the kill (while the replica was down, once it was back): a fleet that
    stops answering shows as zeros."""
    buckets = Counter(min(int(a.at // step), int(seconds // step) - 1) for a in outcome.acks)
    per_step = ", ".join(str(buckets[i]) for i in range(max(int(seconds // step), 1)))
    line = f"acknowledged per {step:.0f} s: {per_step}"
    if "kill" in outcome.marks:
        kill = outcome.marks["kill"]
        back = outcome.marks.get("replica back", float("inf"))
        down = sum(1 for a in outcome.acks if kill <= a.at < back)
        after = sum(1 for a in outcome.acks if a.at >= back)
        line += f"; while the killed replica was down: {down}; after it was back: {after}"
    return line


def report(outcome: Outcome, found: Audit, peaks: list[int], args: argparse.Namespace) -> str:
    """The soak's figures, one per line."""
    errors = ", ".join(f"{code} {n}" for code, n in outcome.errors.most_common()) or "none"
    lines = [
        f"soak: {args.replicas} replicas, {args.streams} concurrent streams for "
        f"{args.seconds:.0f} s, {WORDS} words a reply at {args.token_delay * 1000:.0f} ms a word",
        f"machine: {machine()}",
        f"faults: {'; '.join(outcome.faults) or 'none'}",
        f"streams acknowledged: {len(outcome.acks)}",
        _timeline(outcome, args.seconds),
        f"errors by code: {errors}",
        f"messages lost: {found.lost}",
        f"messages duplicated: {found.duplicated}",
        f"left IN_PROGRESS: {found.in_progress}; threads marked mid-reply: "
        f"{found.mid_reply_threads}; live leases: {found.live_leases}; jobs running: "
        f"{found.running_jobs}",
        f"time to first delta: p50 {_quantile(outcome.first_delta, 0.5) * 1000:.0f} ms, "
        f"p99 {_quantile(outcome.first_delta, 0.99) * 1000:.0f} ms "
        f"({len(outcome.first_delta)} streams)",
        "peak RSS: " + ", ".join(f"replica {i} {kb / 1024:.0f} MiB" for i, kb in enumerate(peaks)),
    ]
    return "\n".join(lines)


def soak(args: argparse.Namespace, log_dir: Path | None = None) -> tuple[Outcome, Audit, str]:
    """Run one soak as ``args`` say; what callers saw, the audit, the report."""
    env = {"LOOM_LEASE_SECONDS": str(args.lease)}
    with Fleet(args.replicas, log_dir=log_dir, token_delay=args.token_delay, env=env) as fleet:
        words = " ".join(f"w{i}" for i in range(WORDS))
        fleet.llm.set_default(Reply(text=words, chunk_delay=args.token_delay))
        outcome, peaks = asyncio.run(
            drive(fleet, args.streams, args.seconds, args.seed, kill=args.kill, db=args.db)
        )
        # Long enough for the sweep to settle what a killed replica left.
        found = audit(fleet, outcome, settle=3 * args.lease + 1)
    return outcome, found, report(outcome, found, peaks, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--streams", type=int, default=200, help="concurrent callers")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--token-delay", type=float, default=0.02, help="seconds between words")
    p.add_argument("--lease", type=float, default=5.0, help="LOOM_LEASE_SECONDS")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-kill", dest="kill", action="store_false", help="kill no replica")
    p.add_argument("--no-db-restart", dest="db", action="store_false")
    p.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="skip the fault-free run"
    )
    return p


def main() -> None:
    """The soak with its faults, after the same load without them (the
    baseline, measured in the same run) unless ``--no-baseline``."""
    args = parser().parse_args()
    if args.baseline:
        calm = argparse.Namespace(**{**vars(args), "kill": False, "db": False})
        print("baseline, without faults:\n" + soak(calm)[2] + "\n", flush=True)
    _, found, text = soak(args)
    print(text, flush=True)
    if found.lost or found.duplicated:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
