"""What a caller sees while the database is down: how long a call takes to
fail (and with which code), how long until health says NOT_SERVING, and
how long after the database returns until it says SERVING again, with
LOOM_MONGODB_TIMEOUT at its default (2 s) against 5 s, the driver timeout
Loom had fixed before it was a setting (the baseline, measured in the same
run). ``python -m bench.outage``"""

from __future__ import annotations

import statistics
import time

import grpc
from grpc_health.v1 import health_pb2

from bench.common import FerretDB, machine, start_loom, start_model
from generated.loom.v1 import thread_pb2, thread_pb2_grpc
from tests.support.process import health_status, wait_serving

ROUNDS = 3
DEADLINE = 10.0
MD = (("x-api-key", "bench-key"),)


def _until(address: str, status: int, limit: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if health_status(address, timeout=0.5) == status:
            return time.monotonic() - started
        time.sleep(0.05)
    return float("nan")


def _round(timeout: str) -> tuple[float, str, float, float]:
    """(seconds a call took to fail, its code, seconds from the kill to
    NOT_SERVING, seconds to SERVING after the database came back)."""
    database = FerretDB().start()
    model = start_model()
    loom = start_loom(database, model, "bench_outage", LOOM_MONGODB_TIMEOUT=timeout)
    address = f"127.0.0.1:{loom.port}"
    try:
        wait_serving(address, 120)
        with grpc.insecure_channel(address) as channel:
            stub = thread_pb2_grpc.ThreadServiceStub(channel)
            stub.ListThreads(thread_pb2.ListThreadsRequest(), metadata=MD, timeout=DEADLINE)
            database.kill()
            down = _until(address, health_pb2.HealthCheckResponse.NOT_SERVING)
            started = time.monotonic()
            try:
                stub.ListThreads(thread_pb2.ListThreadsRequest(), metadata=MD, timeout=DEADLINE)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name  # type: ignore[attr-defined]
            failed = time.monotonic() - started
            database.restart()
            up = _until(address, health_pb2.HealthCheckResponse.SERVING)
        return failed, code, down, up
    finally:
        loom.stop()
        model.stop()
        database.stop()


def main() -> None:
    print(f"machine: {machine()}")
    print(f"a ListThreads call with a {DEADLINE:g} s deadline, FerretDB SIGKILLed; {ROUNDS} rounds")
    print(
        f"{'LOOM_MONGODB_TIMEOUT':>22} {'call fails after':>17} {'code':>12} "
        f"{'NOT_SERVING after':>18} {'SERVING after return':>21}"
    )
    for timeout in ("5", "2"):
        rounds = [_round(timeout) for _ in range(ROUNDS)]
        failed = statistics.median(r[0] for r in rounds)
        codes = ",".join(sorted({r[1] for r in rounds}))
        down = statistics.median(r[2] for r in rounds)
        up = statistics.median(r[3] for r in rounds)
        label = f"{timeout} s" + (" (baseline)" if timeout == "5" else "")
        print(f"{label:>22} {failed:>15.2f} s {codes:>12} {down:>16.2f} s {up:>19.2f} s")


if __name__ == "__main__":
    main()
