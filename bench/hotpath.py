"""Where a SendMessage's cost goes: database round trips per message (before
and after its first delta), CPU per message of each process, and a profile
of the service, with memory OFF and AUTO.

Loom runs as bench/probe.py, which logs every MongoDB command it sends with
its time on the system-wide monotonic clock, so each command is placed in
the message it belongs to: between sending and the first delta, between the
first delta and the last event, or after the reply (background work: memory
extraction jobs, summaries). Then ``--streams`` concurrent streams (each on
its own thread, memory OFF or AUTO with a user per stream) run for
``--seconds``; the CPU time of Loom, the database (FerretDB and PostgreSQL under it) and the
scripted model over
that window, from /proc, divided by the messages served.

    python -m bench.hotpath [--streams 64] [--seconds 20] [--profile pyspy|cprofile]

With ``--profile pyspy`` (py-spy on PATH or in the venv) the throughput
window is also sampled by py-spy, which barely slows the process; with
``cprofile`` the service runs under cProfile (which slows it about twofold,
so its throughput figures are not comparable). The top frames are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

from bench.common import (
    BACKENDS,
    FerretDB,
    machine,
    pct,
    process_cpu_seconds,
    start_loom,
    start_model,
)
from generated.loom.v1 import (
    assistant_pb2,
    assistant_pb2_grpc,
    thread_pb2,
    thread_pb2_grpc,
)
from tests.support.ferretdb import free_port

METADATA = (("x-api-key", "bench-key"),)


class ProfiledFerretDB(FerretDB):
    """FerretDB with its debug HTTP handler on, for Go's CPU profiler."""

    def __init__(self, backend: str) -> None:
        super().__init__(backend=backend)
        self.debug_port = free_port()

    def _common_args(self) -> list[str]:
        args = super()._common_args()
        return [a for a in args if not a.startswith("--debug-addr")] + [
            f"--debug-addr=127.0.0.1:{self.debug_port}"
        ]

    def profile(self, seconds: int, to: Path) -> subprocess.Popen[bytes]:
        """Start fetching a CPU profile of the next ``seconds`` into ``to``."""
        url = f"http://127.0.0.1:{self.debug_port}/debug/pprof/profile?seconds={seconds}"
        return subprocess.Popen(["curl", "-s", "-o", str(to), url])


def _pprof_top(path: Path) -> None:
    """The Go profile's top functions by flat and cumulative time."""
    for order in ("-top", "-top -cum"):
        cmd = ["go", "tool", "pprof", *order.split(), "-nodecount=22", str(path)]
        shown = subprocess.run(cmd, capture_output=True, text=True, check=False)
        print("\n  FerretDB (pprof " + order + "):")
        print("\n".join("    " + line for line in shown.stdout.splitlines()[4:]))


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Timed:
    """One message's moments on the monotonic clock."""

    sent: float
    first: float = 0.0
    end: float = 0.0


@dataclass
class Mode:
    name: str
    memory: int
    timed: list[Timed] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)
    done: int = 0
    errors: int = 0
    cpu: dict[str, float] = field(default_factory=dict)


async def _send(
    stub: thread_pb2_grpc.ThreadServiceStub, req: thread_pb2.SendMessageRequest
) -> tuple[Timed, str]:
    timed = Timed(time.monotonic())
    thread_id = ""
    async for event in stub.SendMessage(req, metadata=METADATA):
        if event.HasField("started"):
            thread_id = event.started.thread_id
        if event.HasField("delta") and not timed.first:
            timed.first = time.monotonic()
    timed.end = time.monotonic()
    return timed, thread_id


async def _assistant(channel: aio.Channel, memory: int) -> str:
    stub = assistant_pb2_grpc.AssistantServiceStub(channel)
    made = await stub.CreateAssistant(
        assistant_pb2.CreateAssistantRequest(
            assistant=assistant_pb2.Assistant(
                name=f"bench {memory}", instructions="Be brief.", memory_mode=memory
            )
        ),
        metadata=METADATA,
    )
    return made.assistant.assistant_id


async def _thread(stub: thread_pb2_grpc.ThreadServiceStub, assistant: str, user: str) -> str:
    req = thread_pb2.SendMessageRequest(
        content=f"Hello, I am {user} and I like sailing.", assistant_id=assistant, user_id=user
    )
    return (await _send(stub, req))[1]


async def _measure(
    channel: aio.Channel,
    mode: Mode,
    cpu: dict[str, Callable[[], float]],
    streams: int,
    seconds: float,
    spy: list[str] | None,
    pprof: tuple[ProfiledFerretDB, Path] | None = None,
) -> None:
    stub = thread_pb2_grpc.ThreadServiceStub(channel)
    assistant = await _assistant(channel, mode.memory)
    one = await _thread(stub, assistant, f"{mode.name}-solo")
    for i in range(60):
        req = thread_pb2.SendMessageRequest(content=f"What about message {i}?", thread_id=one)
        timed, _ = await _send(stub, req)
        if i >= 10:  # the first ten warm caches
            mode.timed.append(timed)
    await asyncio.sleep(1.0)  # let background work of the last message land
    threads = [await _thread(stub, assistant, f"{mode.name}-{i}") for i in range(streams)]
    sampler = None
    if spy:
        sampler = _start(spy)
    fetch = pprof[0].profile(int(seconds), pprof[1]) if pprof else None
    before = {k: f() for k, f in cpu.items()}
    start = time.monotonic()
    stop_at = start + seconds

    async def worker(tid: str) -> None:
        while time.monotonic() < stop_at:
            try:
                req = thread_pb2.SendMessageRequest(content="ping", thread_id=tid)
                async for _ in stub.SendMessage(req, metadata=METADATA):
                    pass
                mode.done += 1
            except grpc.RpcError:
                mode.errors += 1

    await asyncio.gather(*(worker(t) for t in threads))
    end = time.monotonic()
    mode.window = (start, end)
    mode.cpu = {k: f() - before[k] for k, f in cpu.items()}
    for helper in (sampler, fetch):
        if helper is not None:
            await asyncio.to_thread(helper.wait, 60)


def _start(cmd: list[str]) -> subprocess.Popen[bytes]:
    """A profiler beside the run (started from sync code: it returns at once)."""
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _place(commands: list[list[object]], mode: Mode) -> dict[str, collections.Counter[str]]:
    """Count each message's commands by phase, summed over the messages."""
    phases: dict[str, collections.Counter[str]] = {
        "before first delta": collections.Counter(),
        "first delta to end": collections.Counter(),
        "after the reply": collections.Counter(),
    }
    for i, t in enumerate(mode.timed):
        nxt = mode.timed[i + 1].sent if i + 1 < len(mode.timed) else t.end + 1.0
        for start, _, name, coll in commands:
            assert isinstance(start, float)
            key = f"{name} {coll}"
            if t.sent <= start < t.first:
                phases["before first delta"][key] += 1
            elif t.first <= start <= t.end:
                phases["first delta to end"][key] += 1
            elif t.end < start < nxt:
                phases["after the reply"][key] += 1
    return phases


def _report(commands: list[list[object]], mode: Mode) -> None:
    n = len(mode.timed)
    print(f"\n== memory {mode.name}: one stream, {n} messages on one thread ==")
    ttfd = [(t.first - t.sent) * 1000 for t in mode.timed]
    print(f"time to first delta p50 {pct(ttfd, 50):.2f} ms, p95 {pct(ttfd, 95):.2f} ms")
    for phase, counts in _place(commands, mode).items():
        total = sum(counts.values()) / n
        detail = ", ".join(f"{k} {v / n:.2f}" for k, v in counts.most_common())
        print(f"  round trips {phase}: {total:.2f} per message ({detail})")
    lo, hi = mode.window
    in_window = [c for c in commands if lo <= float(c[0]) <= hi]  # type: ignore[arg-type]
    busy = sum(float(c[1]) for c in in_window)  # type: ignore[arg-type]
    rate = mode.done / (hi - lo)
    print(f"\n== memory {mode.name}: {mode.done} messages in {hi - lo:.1f} s ==")
    print(f"  {rate:.1f} messages/s, {mode.errors} errors; load average {load()}")
    per = max(mode.done, 1)
    print(f"  round trips per message: {len(in_window) / per:.2f}")
    print(f"  mean command latency seen by Loom: {1000 * busy / max(len(in_window), 1):.2f} ms")
    cpu = ", ".join(f"{k} {1000 * v / per:.1f}" for k, v in mode.cpu.items())
    print(f"  CPU per message (ms): {cpu}")


def _pyspy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _top_collapsed(path: Path, rows: int = 25) -> None:
    """Self and inclusive share of samples per function, from py-spy's raw
    (collapsed stack) output."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = [f.rsplit(" (", 1)[0] + " " + f.rsplit("/", 1)[-1] for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"\n  py-spy: {total} samples; top frames by own time (share of samples):")
    for f, n in own.most_common(rows):
        print(f"    {100 * n / total:5.1f}%  {f}")
    print("  top frames by inclusive time:")
    for f, n in incl.most_common(rows + 15):
        print(f"    {100 * n / total:5.1f}%  {f}")


async def run(args: argparse.Namespace) -> None:
    ferretdb = ProfiledFerretDB(args.backend).start()
    model = start_model()
    out = Path(tempfile.mkdtemp(prefix="loom-hotpath-"))
    extra = {"BENCH_PROBE_OUT": str(out / "commands.json")}
    if args.profile == "cprofile":
        extra["BENCH_PROBE_PROFILE"] = str(out / "loom.pstats")
    loom = start_loom(ferretdb, model, "bench_hotpath", module="bench.probe", **extra)
    assert ferretdb.proc is not None
    cpu: dict[str, Callable[[], float]] = {
        "Loom": lambda: process_cpu_seconds(loom.proc.pid),
        "FerretDB": lambda: process_cpu_seconds(ferretdb.proc.pid),  # type: ignore[union-attr]
        "model": lambda: process_cpu_seconds(model.proc.pid),
    }
    if ferretdb.postgres is not None:
        cpu["PostgreSQL"] = ferretdb.postgres.cpu_seconds
    modes = [Mode(m, v) for m, v in (("OFF", 3), ("AUTO", 1)) if m in args.modes]
    spy = _pyspy() if args.profile == "pyspy" else None
    try:
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            for mode in modes:
                cmd = None
                if spy:
                    cmd = [spy, "record", "-p", str(loom.proc.pid), "-r", "97", "-f", "raw"]
                    cmd += ["-o", str(out / f"pyspy-{mode.name}.txt"), "--nonblocking"]
                    cmd += ["-d", str(int(args.seconds))]
                pprof = (ferretdb, out / f"ferretdb-{mode.name}.pprof") if args.pprof else None
                await _measure(channel, mode, cpu, args.streams, args.seconds, cmd, pprof)
    finally:
        loom.stop()
        model.stop()
        ferretdb.stop()
    commands = json.loads((out / "commands.json").read_text())
    print(f"machine: {machine()}; FerretDB over {ferretdb.backend}")
    for mode in modes:
        _report(commands, mode)
        raw = out / f"pyspy-{mode.name}.txt"
        if raw.exists():
            _top_collapsed(raw)
        if (out / f"ferretdb-{mode.name}.pprof").exists():
            _pprof_top(out / f"ferretdb-{mode.name}.pprof")
    if args.profile == "cprofile":
        import pstats

        stats = pstats.Stats(str(out / "loom.pstats"))
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
    print(f"\nraw data in {out}")


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", default="OFF,AUTO")
    parser.add_argument("--profile", choices=["none", "pyspy", "cprofile"], default="none")
    parser.add_argument("--backend", choices=BACKENDS, default="", help="default: LOOM_LOCAL_DB")
    parser.add_argument("--pprof", action="store_true", help="profile FerretDB too (needs go)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
