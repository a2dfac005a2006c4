"""Before and after in one run: two Looms (two checkouts, or one checkout
under two settings) side by side, each with its own FerretDB, against one
scripted model, next to a plain async httpx client streaming straight from
that model.

Every round takes time-to-first-delta samples from each side and the direct
client in turn (the order rotating), then a throughput window of each at
``--streams`` concurrent streams (each stream on its own thread), the order
rotating too, with the CPU time of Loom, its FerretDB, PostgreSQL and the
model over each window. The figures are medians over rounds (time to first
delta: percentiles of all samples, and Loom minus direct per pair of
adjacent samples), printed with the load average.

    python -m bench.ab --base HEAD~1                  # the last commit against its parent
    python -m bench.ab --base HEAD --head-env LOOM_X=1  # one setting against none

``--base REV`` (and ``--head REV``, else this checkout) is checked out with
``git archive`` into a temporary folder; ``--head $(git stash create)`` is
the working tree as it is, uncommitted changes included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
from grpc import aio

from bench.common import (
    REPO,
    FerretDB,
    Process,
    machine,
    pct,
    process_cpu_seconds,
    start_loom,
    start_model,
)
from generated.loom.v1 import assistant_pb2, assistant_pb2_grpc, thread_pb2, thread_pb2_grpc

METADATA = (("x-api-key", "bench-key"),)
MEMORY = {"OFF": 3, "AUTO": 1}


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@dataclass
class Side:
    """One Loom under test, or the direct client (``loom`` None)."""

    name: str
    loom: Process | None = None
    ferretdb: FerretDB | None = None
    stub: thread_pb2_grpc.ThreadServiceStub | None = None
    assistant: str = ""
    solo: str = ""
    threads: list[str] = field(default_factory=list)  # one per stream, a user each
    ttfd: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    errors: int = 0
    cpu: dict[str, list[float]] = field(default_factory=dict)


def checkout(rev: str) -> Path:
    """The tree of ``rev`` in a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix="loom-ab-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def _has_text(data: str) -> bool:
    choices = json.loads(data).get("choices") or [{}]
    return bool(choices[0].get("delta", {}).get("content"))


class Direct:
    """The model endpoint with nothing between: httpx, streaming."""

    def __init__(self, port: int) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/v1", limits=httpx.Limits(max_connections=None)
        )
        self.body = json.dumps(
            {
                "model": "scripted-model",
                "stream": True,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello from ttfd"},
                    {"role": "assistant", "content": "Echo: Hello from ttfd"},
                    {"role": "user", "content": "ping"},
                ],
            }
        )

    async def once(self) -> float:
        """Seconds to the first content delta; the stream is read to its end."""
        start = time.perf_counter()
        first = 0.0
        headers = {"content-type": "application/json"}
        async with self.client.stream(
            "POST", "/chat/completions", content=self.body, headers=headers
        ) as response:
            async for line in response.aiter_lines():
                if not first and line.startswith("data: {") and _has_text(line[6:]):
                    first = time.perf_counter() - start
        return first


async def _loom_once(side: Side, thread_id: str, content: str = "ping") -> tuple[float, str]:
    assert side.stub is not None
    start = time.perf_counter()
    first = 0.0
    started = ""
    req = thread_pb2.SendMessageRequest(content=content, thread_id=thread_id)
    if not thread_id:
        req = thread_pb2.SendMessageRequest(
            content=content, assistant_id=side.assistant, user_id=f"user-{content}"
        )
    # A bound, not a measurement: a stalled stream counts as an error.
    async for event in side.stub.SendMessage(req, metadata=METADATA, timeout=120):
        if event.HasField("started"):
            started = event.started.thread_id
        if event.HasField("delta") and not first:
            first = time.perf_counter() - start
    return first, started


async def _prepare(side: Side, channel: aio.Channel, memory: str, streams: int) -> None:
    side.stub = thread_pb2_grpc.ThreadServiceStub(channel)
    made = await assistant_pb2_grpc.AssistantServiceStub(channel).CreateAssistant(
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name="bench",
                instructions="Be brief.",
                memory_mode=MEMORY[memory],  # type: ignore[arg-type]
            )
        ),
        metadata=METADATA,
    )
    side.assistant = made.assistant.assistant_id
    _, side.solo = await _loom_once(side, "", "solo")
    side.threads = [(await _loom_once(side, "", f"stream {i}"))[1] for i in range(streams)]


async def _window(
    side: Side, direct: Direct, streams: int, seconds: float, cpu: dict[str, Callable[[], float]]
) -> None:
    """``streams`` concurrent streams for ``seconds``; messages/s and CPU
    per message of each process into ``side``."""
    threads = side.threads[:streams]
    done = 0
    before = {k: f() for k, f in cpu.items()}
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            try:
                if side.loom is None:
                    await direct.once()
                else:
                    await _loom_once(side, threads[i])
                done += 1
            except (grpc.RpcError, httpx.HTTPError):
                side.errors += 1

    await asyncio.gather(*(worker(i) for i in range(streams)))
    elapsed = time.perf_counter() - start
    side.rates.append(done / elapsed)
    for k, f in cpu.items():
        side.cpu.setdefault(k, []).append(1000 * (f() - before[k]) / max(done, 1))


def _cpu_of(side: Side, model: Process) -> dict[str, Callable[[], float]]:
    cpu: dict[str, Callable[[], float]] = {"model": lambda: process_cpu_seconds(model.proc.pid)}
    if side.loom is not None and side.ferretdb is not None:
        loom, db = side.loom, side.ferretdb
        cpu["Loom"] = lambda: process_cpu_seconds(loom.proc.pid)
        cpu["FerretDB"] = lambda: process_cpu_seconds(db.proc.pid)  # type: ignore[union-attr]
        if db.postgres is not None:
            cpu["PostgreSQL"] = db.postgres.cpu_seconds
    return cpu


def _report(
    sides: list[Side], direct: Side, added: dict[str, list[float]], loads: list[float]
) -> None:
    print(f"machine: {machine()}")
    print(
        f"load average (1 min) during the run: median {statistics.median(loads):.1f}, "
        f"range {min(loads):.1f}-{max(loads):.1f}"
    )
    head = f"{'':<10}{'ttfd p50':>10}{'p95':>8}{'added p50':>11}{'p95':>8}{'msg/s':>9}"
    print(f"{head}{'errors':>8}  CPU ms/message")
    for s in [*sides, direct]:
        extra = added.get(s.name)
        add = f"{pct(extra, 50):>11.2f}{pct(extra, 95):>8.2f}" if extra else f"{'':>19}"
        cpu = ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in s.cpu.items())
        total = sum(statistics.median(v) for k, v in s.cpu.items() if k != "model")
        rate = f"{statistics.median(s.rates):>9.1f}" if s.rates else f"{'-':>9}"
        rates = "/".join(f"{r:.0f}" for r in s.rates)
        print(
            f"{s.name:<10}{pct(s.ttfd, 50):>10.2f}{pct(s.ttfd, 95):>8.2f}{add}"
            f"{rate}{s.errors:>8}  {cpu} (Loom and database {total:.1f}); "
            f"messages/s by round {rates}"
        )
    diff = added["head-base"]
    mean = statistics.fmean(diff)
    print(
        f"head minus base per pair of samples: median {statistics.median(diff):+.2f} ms, "
        f"mean {mean:+.2f} ms (standard error {statistics.stdev(diff) / len(diff) ** 0.5:.2f})"
    )


async def _rounds(
    args: argparse.Namespace, sides: list[Side], model: Process
) -> tuple[Side, dict[str, list[float]], list[float]]:
    """Interleaved samples and windows; the direct side and Loom's added
    time to first delta per pair, and the load average at each window."""
    direct = Side("direct")
    added: dict[str, list[float]] = {}
    loads: list[float] = []
    client = Direct(model.port)
    try:
        for _ in range(10):  # warm every path
            for s in sides:
                await _loom_once(s, s.solo)
            await client.once()
        order: list[Side] = [*sides, direct]
        for r in range(args.rounds):
            for i in range(args.samples):
                k = (i + r) % len(order)
                for s in order[k:] + order[:k]:
                    if s.loom is None:
                        s.ttfd.append(1000 * await client.once())
                    else:
                        s.ttfd.append(1000 * (await _loom_once(s, s.solo))[0])
                for s in sides:
                    added.setdefault(s.name, []).append(s.ttfd[-1] - direct.ttfd[-1])
                added.setdefault("head-base", []).append(sides[1].ttfd[-1] - sides[0].ttfd[-1])
            loads.append(load())
            k = r % len(order)
            for s in order[k:] + order[:k] if args.seconds else []:
                await _window(s, client, args.streams, args.seconds, _cpu_of(s, model))
    finally:
        await client.client.aclose()
    return direct, added, loads


async def run(args: argparse.Namespace) -> None:
    model = start_model()
    plans = [
        ("base", checkout(args.base), args.base_env, "service"),
        ("head", checkout(args.head) if args.head else REPO, args.head_env, args.head_module),
    ]
    sides: list[Side] = []
    channels: list[aio.Channel] = []
    try:
        for name, src, env, module in plans:
            db = FerretDB().start()
            extra = dict(e.split("=", 1) for e in env)
            loom = start_loom(db, model, f"ab_{name}", source=src, module=module, **extra)
            side = Side(name, loom, db)
            sides.append(side)
            assert side.loom is not None
            channels.append(aio.insecure_channel(f"127.0.0.1:{side.loom.port}"))
            await _prepare(side, channels[-1], args.memory, args.streams)
        direct, added, loads = await _rounds(args, sides, model)
    finally:
        for c in channels:
            await c.close()
        for s in sides:
            if s.loom is not None:
                s.loom.stop()
            if s.ferretdb is not None:
                s.ferretdb.stop()
        model.stop()
    print(f"base: {args.base} {' '.join(args.base_env)}; head: {args.head or 'this checkout'}")
    print(f"head: python -m {args.head_module} {' '.join(args.head_env)}; memory {args.memory}")
    print(
        f"{args.rounds} rounds of {args.samples} samples and a {args.seconds:g} s window "
        f"at {args.streams} streams per side"
    )
    _report(sides, direct, added, loads)


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    # SIGTERM (timeout, a kill) stops the run as Ctrl-C does: the processes
    # it started are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD~1", help="git revision of the base side")
    parser.add_argument(
        "--head", default="", help="git revision of the head side (default: this checkout)"
    )
    parser.add_argument("--base-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--head-env", nargs="*", default=[], metavar="NAME=VALUE")
    parser.add_argument("--head-module", default="service", help="e.g. bench.probe")
    parser.add_argument("--memory", choices=list(MEMORY), default="OFF")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=40)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
