"""What tracing costs: SendMessage with tracing off versus on, exporting every
span over OTLP (gRPC) to a real collector (Jaeger all-in-one, ``make jaeger``).

Two Loom processes share one FerretDB and one scripted model: one with
``OTEL_TRACES_EXPORTER=none`` (the default), one with ``otlp`` to Jaeger and
the SDK's default batch processor and sampler (every span kept). Rounds
alternate between them, so drift on the machine hits both alike:

1. time to first delta, samples interleaved one by one (a new message on an
   existing thread), p50 and p95;
2. messages per second with 16 concurrent streams, each on its own thread
   (new threads every round, so every window sees threads of the same
   length), a window per setting per round, the order flipped every round.

Metrics export stays off in both (Jaeger takes no OTLP metrics), and Loom
logs at WARNING, as in the other benchmarks.

    python -m bench.tracing [--rounds 6] [--samples 40] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import urllib.request

from grpc import aio

from bench.common import FerretDB, machine, pct, start_loom, start_model
from bench.messages import _loom_ttfd, _new_thread, throughput
from generated.loom.v1 import thread_pb2_grpc
from tests.support.jaeger import Jaeger, jaeger_bin

SETTINGS = ("off", "on")
SERVICE = "loom-bench"


def _spans_received(jaeger: Jaeger) -> int:
    """Spans of the traced Loom that Jaeger stored (its Prometheus counter)."""
    url = f"http://127.0.0.1:{jaeger.ports['admin']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0
    for line in text.splitlines():
        if line.startswith("jaeger_collector_spans_saved_by_svc_total") and (
            f'svc="{SERVICE}"' in line and 'result="ok"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def run(rounds: int, samples: int, concurrency: int, seconds: float) -> None:
    if not jaeger_bin().exists():
        raise SystemExit(f"Jaeger is not built at {jaeger_bin()}: run `make jaeger` first")
    ferretdb = FerretDB().start()
    jaeger = Jaeger().start()
    model = start_model()
    common = {"OTEL_METRICS_EXPORTER": "none", "OTEL_SERVICE_NAME": SERVICE}
    looms = {
        "off": start_loom(
            ferretdb, model, "bench_tracing_off", OTEL_TRACES_EXPORTER="none", **common
        ),
        "on": start_loom(
            ferretdb,
            model,
            "bench_tracing_on",
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_EXPORTER_OTLP_ENDPOINT=jaeger.otlp_grpc,
            **common,
        ),
    }
    ttfd: dict[str, list[float]] = {s: [] for s in SETTINGS}
    messages: dict[str, int] = dict.fromkeys(SETTINGS, 0)
    errors: dict[str, int] = dict.fromkeys(SETTINGS, 0)
    busy: dict[str, float] = dict.fromkeys(SETTINGS, 0.0)
    rates: dict[str, list[float]] = {s: [] for s in SETTINGS}
    paired: list[float] = []  # on minus off, sample by sample
    try:
        channels = {s: aio.insecure_channel(f"127.0.0.1:{looms[s].port}") for s in SETTINGS}
        stubs = {s: thread_pb2_grpc.ThreadServiceStub(channels[s]) for s in SETTINGS}
        ttfd_thread = {s: await _new_thread(stubs[s], "ttfd") for s in SETTINGS}
        for _ in range(20):  # warm both
            for s in SETTINGS:
                await _loom_ttfd(stubs[s], ttfd_thread[s])
        spans_before = _spans_received(jaeger)
        for r in range(rounds):
            order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
            for i in range(samples):
                pair: dict[str, float] = {}
                for s in order if i % 2 == 0 else order[::-1]:
                    pair[s] = await _loom_ttfd(stubs[s], ttfd_thread[s]) * 1000
                    ttfd[s].append(pair[s])
                paired.append(pair["on"] - pair["off"])
            workers = {
                s: [await _new_thread(stubs[s], f"r{r} w{i}") for i in range(concurrency)]
                for s in SETTINGS
            }
            for s in order:
                done, failed, elapsed = await throughput(stubs[s], workers[s], seconds)
                messages[s] += done
                errors[s] += failed
                busy[s] += elapsed
                rates[s].append(done / elapsed)
        await asyncio.sleep(6)  # the batch processor's 5 s schedule delay, then export
        spans = _spans_received(jaeger) - spans_before
        for channel in channels.values():
            await channel.close()
    finally:
        for loom in looms.values():
            loom.stop()
        model.stop()
        jaeger.stop()
        ferretdb.stop()

    rate = {s: messages[s] / busy[s] for s in SETTINGS}
    p50 = {s: pct(ttfd[s], 50) for s in SETTINGS}
    print(f"machine: {machine()}")
    print(
        f"tracing off (OTEL_TRACES_EXPORTER=none) vs on (otlp/grpc to Jaeger all-in-one "
        f"v1.76.0, every span kept), {rounds} interleaved rounds"
    )
    print(f"time to first delta, {len(ttfd['off'])} samples each (ms):")
    print(f"  {'':<14}{'p50':>8}{'p95':>8}")
    for s in SETTINGS:
        print(f"  {'tracing ' + s:<14}{p50[s]:>8.2f}{pct(ttfd[s], 95):>8.2f}")
    print(f"  p50 change: {(p50['on'] - p50['off']) / p50['off'] * 100:+.1f}%")
    print(
        f"  paired difference (on minus off, adjacent samples): p50 {pct(paired, 50):+.2f} ms, "
        f"mean {sum(paired) / len(paired):+.2f} ms"
    )
    print(f"throughput, {concurrency} concurrent streams, {rounds} x {seconds:g} s each:")
    for s in SETTINGS:
        per_round = ", ".join(f"{x:.0f}" for x in rates[s])
        print(
            f"  tracing {s:<4} {rate[s]:.1f} messages/s ({messages[s]} messages, "
            f"{errors[s]} errors; rounds: {per_round})"
        )
    print(f"  change: {(rate['on'] - rate['off']) / rate['off'] * 100:+.1f}%")
    per_message = spans / max(messages["on"] + len(ttfd["on"]), 1)
    print(f"spans Jaeger stored while measuring: {spans} (~{per_message:.1f} per message)")


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.samples, args.concurrency, args.seconds))


if __name__ == "__main__":
    main()
