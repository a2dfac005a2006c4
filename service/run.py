"""Loom as a process: build it, check the database and its memory store,
serve until SIGTERM or SIGINT, then stop gracefully and flush telemetry."""

from __future__ import annotations

import asyncio
import logging
import signal

from pymongo import errors as mongo_errors

from service.config import Settings
from service.database import unreachable
from service.deployment import check_memory_store
from service.memory.embeddings import EmbeddingError
from service.server import build
from service.telemetry import Telemetry, TelemetryConfigError, setup

__all__ = ["serve"]

log = logging.getLogger(__name__)


async def serve(settings: Settings, telemetry: Telemetry | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; ``telemetry``
    defaults to what the OTEL_ variables ask for, and is flushed at the end."""
    if telemetry is None:
        try:
            telemetry = setup()
        except TelemetryConfigError as exc:
            raise SystemExit(f"loom: invalid configuration: {exc}") from None
    try:
        await _serve(settings, telemetry)
    finally:
        # Exports what is buffered (blocking, up to the exporter's timeout).
        await asyncio.to_thread(telemetry.shutdown)


async def _serve(settings: Settings, telemetry: Telemetry) -> None:
    try:
        loom = build(settings, telemetry)
    except EmbeddingError as exc:
        raise SystemExit(f"loom: the memory embedding model is unavailable: {exc}") from None
    try:
        await loom.store.ping()
        await check_memory_store(loom.store, settings)
    except mongo_errors.PyMongoError as exc:
        raise SystemExit(unreachable(exc)) from None
    await loom.start()
    if not loom.llm.configured:
        log.warning(
            "no model endpoint configured (LOOM_LLM_BASE_URL / LOOM_LLM_API_KEY): "
            "SendMessage will answer FAILED_PRECONDITION"
        )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down (grace %.1fs)", settings.shutdown_grace)
    await loom.stop()
