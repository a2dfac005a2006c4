"""``python -m service`` with a MongoDB command log and, optionally, cProfile:
what the profiling benchmark (bench/hotpath.py) runs instead of the service.

Set ``BENCH_PROBE_OUT`` to a file: every database command the service sends
is recorded there as ``[start, seconds, name, collection]`` (start on the
system-wide monotonic clock, so the benchmark can place each command before
or after a message's first delta). With ``BENCH_PROBE_PROFILE`` set to a
file, the service runs under cProfile and its stats are written there. Both
are written when the service stops (SIGTERM). ``BENCH_PROBE_UVLOOP=1`` runs
it on uvloop's event loop instead of asyncio's, to measure the difference.
"""

from __future__ import annotations

import cProfile
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from pymongo import monitoring

__all__ = ["CommandLog"]


class CommandLog(monitoring.CommandListener):
    """Every command sent and how long its answer took."""

    def __init__(self) -> None:
        self._begun: dict[int, tuple[float, str, str]] = {}
        self.done: list[list[Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:  # type: ignore[override]
        collection = event.command.get(event.command_name)
        name = collection if isinstance(collection, str) else ""
        self._begun[event.request_id] = (time.monotonic(), event.command_name, name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._end(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._end(event.request_id)

    def _end(self, request_id: int) -> None:
        begun = self._begun.pop(request_id, None)
        if begun is not None:
            start, command, collection = begun
            self.done.append([start, time.monotonic() - start, command, collection])


def main() -> int:
    from service.__main__ import main as service_main

    log = CommandLog()
    out = os.environ.get("BENCH_PROBE_OUT")
    if out:
        monitoring.register(log)
    if os.environ.get("BENCH_PROBE_UVLOOP") == "1":
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    profile_out = os.environ.get("BENCH_PROBE_PROFILE")
    profiler = cProfile.Profile() if profile_out else None
    # The service stops gracefully on SIGTERM; so does this wrapper.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if profiler is not None:
            profiler.enable()
        return service_main(["serve"])
    except KeyboardInterrupt:
        return 0
    finally:
        if profiler is not None and profile_out:
            profiler.disable()
            profiler.dump_stats(profile_out)
        if out:
            Path(out).write_text(json.dumps(log.done))


if __name__ == "__main__":
    raise SystemExit(main())
