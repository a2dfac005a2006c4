"""What a NOT_FOUND tells about another tenant's object: ``python -m bench.isolation``.

GetThread through the real service (FerretDB, Loom as a process) for an id
that does not exist (the baseline), for another tenant's thread holding
450,000 characters of cached context, and for the caller's own such thread
(what reading the document costs). With reads keyed by tenant, the second
must cost what the first does; if a read fetched the document and then
checked its tenant, the second would cost what the third does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime

import grpc
from grpc import aio

from bench.common import FerretDB, machine, pct, start_loom, start_model
from generated.loom.v1 import thread_pb2, thread_pb2_grpc
from service.core import ids
from service.core.models import ContextEntry, MessageStatus, Role, Thread
from service.store import connect

DB = "loom_bench_isolation"
AUTH = (("x-api-key", "bench-key"),)  # tenant "dev"


async def _big_thread(uri: str, tenant: str) -> str:
    """A thread of ``tenant`` whose cached context holds 450,000 characters."""
    store = connect(uri, DB)
    try:
        now = datetime.now(UTC)
        thread = Thread(ids.new_id(ids.THREAD), tenant, ids.new_id(ids.ASSISTANT), create_time=now)
        await store.threads.insert(thread)
        context = [
            ContextEntry(i, Role.USER, "c" * 2_000, MessageStatus.COMPLETE, 500) for i in range(225)
        ]
        await store.threads.save_context(tenant, thread.thread_id, context, 225, now, epoch=0)
        return thread.thread_id
    finally:
        await store.close()


async def _call(stub: thread_pb2_grpc.ThreadServiceStub, thread_id: str) -> float:
    """Milliseconds of one GetThread call, found or NOT_FOUND."""
    started = time.perf_counter()
    try:
        await stub.GetThread(thread_pb2.GetThreadRequest(thread_id=thread_id), metadata=AUTH)
    except aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    return (time.perf_counter() - started) * 1000


async def _run(port: int, cases: dict[str, str], n: int) -> None:
    """``n`` rounds of one call per case, interleaved so that the machine's
    load weighs on every case alike (after 20 unmeasured rounds)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = thread_pb2_grpc.ThreadServiceStub(channel)
        for i in range(n + 20):
            for name, thread_id in cases.items():
                took = await _call(stub, thread_id)
                if i >= 20:
                    times[name].append(took)
    for name, values in times.items():
        print(f"  {name:<38} p50 {pct(values, 50):6.2f} ms  p95 {pct(values, 95):6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per case")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    ferretdb = FerretDB().start()
    model = start_model()
    loom = start_loom(ferretdb, model, DB)
    try:
        theirs = asyncio.run(_big_thread(ferretdb.uri, "other-tenant"))
        mine = asyncio.run(_big_thread(ferretdb.uri, "dev"))
        print(f"GetThread as tenant dev, {args.calls} calls each (FerretDB over SQLite):")
        cases = {
            "missing id: NOT_FOUND (baseline)": ids.new_id(ids.THREAD),
            "other tenant's 450k thread: NOT_FOUND": theirs,
            "own 450k thread: found": mine,
        }
        asyncio.run(_run(loom.port, cases, args.calls))
    finally:
        loom.stop()
        model.stop()
        ferretdb.stop()


if __name__ == "__main__":
    main()
