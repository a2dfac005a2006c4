"""Prompt cost against thread length.

For threads of 10, 100, 1,000 and 10,000 messages (an assistant with an
8,192-token window, so the longer threads are well past it), measures:

- building the prompt: reading the thread and fitting its prompt, as the
  reply loop does, in this process;
- time to first delta of a SendMessage through Loom (its own process).

and prints the 10,000-message case over the 10-message case (target: at most
1.5, i.e. the cost does not grow with history).

The threads are written through Loom's own store (messages, cached context
and summary as a thread of that length has them), not by sending thousands
of messages through the model.

    python -m bench.context [--samples 50]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

from grpc import aio

from bench.common import FerretDB, machine, pct, start_loom, start_model
from generated.loom.v1 import thread_pb2, thread_pb2_grpc
from service.core import ids
from service.core.budget import fit, plan_budget, with_tokens
from service.core.context import merge
from service.core.models import (
    Assistant,
    ContextStrategy,
    MemoryMode,
    Message,
    MessageStatus,
    Role,
    Summary,
    Thread,
)
from service.llm.tokens import TokenBudgets
from service.store import MongoStore, connect

LENGTHS = (10, 100, 1_000, 10_000)
WINDOW = 8192
METADATA = (("x-api-key", "bench-key"),)


def _text(i: int) -> str:
    role = "question" if i % 2 == 0 else "answer"
    return f"This is {role} number {i} of a long conversation about planning a trip to Lisbon."


async def _seed(store: MongoStore, tenant: str, assistant_id: str, length: int) -> str:
    counter = TokenBudgets()
    t = datetime.now(UTC)
    thread = Thread(
        thread_id=ids.new_id(ids.THREAD),
        tenant=tenant,
        assistant_id=assistant_id,
        create_time=t,
        update_time=t,
    )
    await store.threads.insert(thread)
    batch: list[Message] = []
    for i in range(length):
        batch.append(
            Message(
                message_id=ids.new_id(ids.MESSAGE),
                tenant=tenant,
                thread_id=thread.thread_id,
                role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                content=_text(i),
                status=MessageStatus.COMPLETE,
                create_time=t,
            )
        )
        if len(batch) == 500 or i == length - 1:
            await store.messages.append_all(batch, i + 1 - len(batch))
            batch = []
    # The tail a thread of this length keeps verbatim, and a summary of the rest.
    limit = plan_budget(WINDOW)
    tail: list = []
    used = 0
    for i in reversed(range(length)):
        entry = await with_tokens(
            Message(
                message_id="",
                tenant=tenant,
                thread_id=thread.thread_id,
                role=Role.USER if i % 2 == 0 else Role.ASSISTANT,
                content=_text(i),
                status=MessageStatus.COMPLETE,
                sequence=i,
            ).entry(),
            counter,
        )
        if used + entry.tokens > 0.55 * limit:
            break
        tail.insert(0, entry)
        used += entry.tokens
    context = merge([], tail, 400_000)
    await store.threads.save_context(tenant, thread.thread_id, context, length, t, epoch=0)
    if tail and tail[0].sequence > 0:
        summary = Summary(
            "The user and the assistant are planning a trip to Lisbon: dates, budget, "
            "neighbourhoods, food and transport have been discussed. " * 8,
            tail[0].sequence - 1,
            "scripted-model",
            t,
        )
        await store.threads.save_summary(tenant, thread.thread_id, summary, context, epoch=0)
    return thread.thread_id


async def _build_ms(store: MongoStore, tenant: str, assistant: Assistant, thread_id: str) -> float:
    counter = TokenBudgets()
    start = time.perf_counter()
    thread = await store.threads.get(tenant, thread_id)
    assert thread is not None
    new = Message(
        message_id="",
        tenant=tenant,
        thread_id=thread_id,
        role=Role.USER,
        content="What should we book first?",
        status=MessageStatus.COMPLETE,
        sequence=thread.message_count,
    )
    await fit(
        instructions=assistant.instructions,
        memories=[],
        summary=thread.summary,
        history=thread.context,
        new=new.entry(),
        budget=plan_budget(WINDOW),
        ratio=1.0,
        counter=counter,
    )
    return (time.perf_counter() - start) * 1000


async def _ttfd_ms(stub: thread_pb2_grpc.ThreadServiceStub, thread_id: str) -> float:
    start = time.perf_counter()
    first = 0.0
    async for event in stub.SendMessage(
        thread_pb2.SendMessageRequest(content="What should we book first?", thread_id=thread_id),
        metadata=METADATA,
    ):
        if event.HasField("delta") and not first:
            first = time.perf_counter() - start
    return first * 1000


async def run(samples: int) -> None:
    ferretdb = FerretDB().start()
    model = start_model()
    loom = start_loom(ferretdb, model, "bench_context")
    store = connect(ferretdb.uri, "bench_context")
    results: dict[int, tuple[list[float], list[float]]] = {}
    try:
        t = datetime.now(UTC)
        assistant = Assistant(
            assistant_id=ids.new_id(ids.ASSISTANT),
            tenant="dev",
            name="bench",
            instructions="You are a helpful travel assistant.",
            memory_mode=MemoryMode.OFF,
            create_time=t,
            update_time=t,
            context_window=WINDOW,
            context_strategy=ContextStrategy.SUMMARIZE,
        )
        await store.assistants.insert(assistant)
        threads = {n: await _seed(store, "dev", assistant.assistant_id, n) for n in LENGTHS}
        async with aio.insecure_channel(f"127.0.0.1:{loom.port}") as channel:
            stub = thread_pb2_grpc.ThreadServiceStub(channel)
            for n in LENGTHS:  # warm up
                await _ttfd_ms(stub, threads[n])
            build: dict[int, list[float]] = {n: [] for n in LENGTHS}
            ttfd: dict[int, list[float]] = {n: [] for n in LENGTHS}
            for _ in range(samples):
                for n in LENGTHS:  # interleaved, so noise hits every length alike
                    build[n].append(await _build_ms(store, "dev", assistant, threads[n]))
                    ttfd[n].append(await _ttfd_ms(stub, threads[n]))
            results = {n: (build[n], ttfd[n]) for n in LENGTHS}
    finally:
        await store.close()
        loom.stop()
        model.stop()
        ferretdb.stop()

    print(f"machine: {machine()}")
    print(f"window {WINDOW} tokens, {samples} samples per length (ms):")
    print(f"  {'messages':>9} {'build p50':>10} {'build p95':>10} {'ttfd p50':>9} {'ttfd p95':>9}")
    for n in LENGTHS:
        b, f = results[n]
        row = [pct(b, 50), pct(b, 95), pct(f, 50), pct(f, 95)]
        print(f"  {n:>9} " + " ".join(f"{v:>9.2f}" for v in row))
    b10, f10 = results[LENGTHS[0]]
    b10k, f10k = results[LENGTHS[-1]]
    print(
        f"ratio 10,000 / 10 messages (p50): prompt build {pct(b10k, 50) / pct(b10, 50):.2f}, "
        f"time to first delta {pct(f10k, 50) / pct(f10, 50):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(run(args.samples))


if __name__ == "__main__":
    main()
