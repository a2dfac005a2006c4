"""SendMessage overhead and throughput.

1. Time to first delta: SendMessage through Loom (a new message on an
   existing thread) versus the same prompt sent straight to the model
   endpoint with the openai SDK, interleaved in one run; reported as p50/p95
   of each and of Loom's overhead (Loom minus direct).
2. Messages per second with 16 concurrent streams (each on its own thread),
   next to the direct model's rate at the same concurrency.

Loom, FerretDB (over ``--database``: the local set-up by default) and the
scripted model each run as their own process; the CPU time Loom and the
database spend per message of the throughput run is printed beside it.

    make bench            # or: python -m bench.messages [--samples 200] [--database sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import grpc
import openai
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
from generated.loom.v1 import thread_pb2, thread_pb2_grpc

METADATA = (("x-api-key", "bench-key"),)


async def _loom_ttfd(stub: thread_pb2_grpc.ThreadServiceStub, thread_id: str) -> float:
    start = time.perf_counter()
    first = 0.0
    call = stub.SendMessage(
        thread_pb2.SendMessageRequest(content="What is the weather like?", thread_id=thread_id),
        metadata=METADATA,
    )
    async for event in call:
        if event.HasField("delta") and not first:
            first = time.perf_counter() - start
    return first


async def _direct_ttfd(client: openai.AsyncOpenAI, history: list[dict[str, str]]) -> float:
    start = time.perf_counter()
    first = 0.0
    stream = await client.chat.completions.create(
        model="scripted-model",
        messages=history,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and not first:
            first = time.perf_counter() - start
    return first


async def _new_thread(stub: thread_pb2_grpc.ThreadServiceStub, tag: str) -> str:
    call = stub.SendMessage(
        thread_pb2.SendMessageRequest(content=f"Hello from {tag}"), metadata=METADATA
    )
    thread_id = ""
    async for event in call:
        if event.HasField("started"):
            thread_id = event.started.thread_id
    return thread_id


async def throughput(
    stub: thread_pb2_grpc.ThreadServiceStub, threads: list[str], seconds: float
) -> tuple[int, int, float]:
    """Send messages on every thread at once, each thread one at a time, for
    ``seconds``; return (messages completed, calls failed, seconds taken)."""
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(tid: str) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            try:
                async for _ in stub.SendMessage(
                    thread_pb2.SendMessageRequest(content="ping", thread_id=tid),
                    metadata=METADATA,
                ):
                    pass
                done += 1
            except grpc.RpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(t) for t in threads))
    return done, errors, time.perf_counter() - started


async def run(samples: int, concurrency: int, seconds: float, database: str) -> None:
    ferretdb = FerretDB(backend=database).start()
    model = start_model()
    loom = start_loom(ferretdb, model, "bench_messages")
    try:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{model.port}/v1", api_key="x", max_retries=0
        )
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            stub = thread_pb2_grpc.ThreadServiceStub(channel)
            thread_id = await _new_thread(stub, "ttfd")
            history = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello from ttfd"},
                {"role": "assistant", "content": "Echo: Hello from ttfd"},
                {"role": "user", "content": "What is the weather like?"},
            ]
            for _ in range(20):  # warm both paths
                await _loom_ttfd(stub, thread_id)
                await _direct_ttfd(client, history)
            loom_t: list[float] = []
            direct_t: list[float] = []
            overhead: list[float] = []
            for i in range(samples):
                # Alternate the order so neither path always runs second.
                if i % 2:
                    d = await _direct_ttfd(client, history)
                    lt = await _loom_ttfd(stub, thread_id)
                else:
                    lt = await _loom_ttfd(stub, thread_id)
                    d = await _direct_ttfd(client, history)
                loom_t.append(lt * 1000)
                direct_t.append(d * 1000)
                overhead.append((lt - d) * 1000)

            threads = [await _new_thread(stub, f"worker {i}") for i in range(concurrency)]
            cpu_before = process_cpu_seconds(loom.proc.pid), ferretdb.cpu_seconds()
            done, errors, elapsed = await throughput(stub, threads, seconds)
            loom_cpu = process_cpu_seconds(loom.proc.pid) - cpu_before[0]
            database_cpu = ferretdb.cpu_seconds() - cpu_before[1]
            loom_rate = done / elapsed

            direct_done = 0
            stop_at = time.perf_counter() + seconds

            async def direct_worker() -> None:
                nonlocal direct_done
                while time.perf_counter() < stop_at:
                    await _direct_ttfd(client, history)
                    direct_done += 1

            started = time.perf_counter()
            await asyncio.gather(*(direct_worker() for _ in range(concurrency)))
            direct_rate = direct_done / (time.perf_counter() - started)
        await client.close()
    finally:
        loom.stop()
        model.stop()
        ferretdb.stop()

    print(f"machine: {machine()}")
    print(f"database: FerretDB over {ferretdb.backend}")
    print(f"time to first delta, {samples} interleaved samples (ms):")
    print(f"  {'':<22}{'p50':>8}{'p95':>8}")
    print(f"  {'direct to model':<22}{pct(direct_t, 50):>8.2f}{pct(direct_t, 95):>8.2f}")
    print(f"  {'through Loom':<22}{pct(loom_t, 50):>8.2f}{pct(loom_t, 95):>8.2f}")
    print(f"  {'Loom overhead':<22}{pct(overhead, 50):>8.2f}{pct(overhead, 95):>8.2f}")
    print(f"throughput, {concurrency} concurrent streams, {seconds:g} s each:")
    print(f"  through Loom: {loom_rate:.1f} messages/s ({done} messages, {errors} errors)")
    print(f"  direct to model: {direct_rate:.1f} completions/s")
    per_message = 1000 / max(done, 1)
    print(
        f"  CPU per message: Loom {loom_cpu * per_message:.1f} ms, "
        f"database {database_cpu * per_message:.1f} ms"
    )


def main() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--database", choices=BACKENDS, default="", help="default: LOOM_LOCAL_DB")
    args = parser.parse_args()
    asyncio.run(run(args.samples, args.concurrency, args.seconds, args.database))


if __name__ == "__main__":
    main()
