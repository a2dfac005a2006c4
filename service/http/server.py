"""uvicorn serving the HTTP door on the running event loop (the gRPC
server's, so both doors share one core), on a socket the wiring bound.

Stopping mirrors the gRPC server's graceful shutdown: no new connections,
idle ones closed, requests and streams in flight given the grace period,
then cancelled (a reply cut that way is stored INCOMPLETE). uvicorn's own
``serve()`` is not used: it would take over the process's signals, which
the wiring handles for both doors.
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

__all__ = ["HttpServer"]


class HttpServer:
    """An ASGI app served on ``sock`` (TLS with ``ssl_context``)."""

    def __init__(
        self, app: ASGIApp, sock: socket.socket, *, ssl_context: ssl.SSLContext | None, grace: float
    ) -> None:
        factory: Callable[..., ssl.SSLContext] | None = (
            (lambda _config, _default: ssl_context) if ssl_context is not None else None
        )
        self._config = uvicorn.Config(
            app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,  # the telemetry middleware writes one line per request
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=max(1, math.ceil(grace)),
            ssl_context_factory=factory,
        )
        self._sock = sock
        self._port: int = sock.getsockname()[1]
        self._server: uvicorn.Server | None = None
        self._ticks: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port it listens on (or listened on, once stopped)."""
        return self._port

    async def start(self) -> None:
        """Start accepting connections."""
        self._config.load()
        server = uvicorn.Server(self._config)
        # What Server.serve() sets up before startup(); lifespan is off.
        server.lifespan = self._config.lifespan_class(self._config)
        await server.startup(sockets=[self._sock])
        self._server = server
        # uvicorn's loop refreshes the Date header and watches should_exit.
        self._ticks = asyncio.create_task(server.main_loop(), name="loom-http")

    async def stop(self, grace: float) -> None:
        """Stop accepting, give requests in flight ``grace`` seconds, then
        cancel what is left."""
        if self._server is None or self._ticks is None:
            self._sock.close()
            return
        # uvicorn takes whole seconds, and with 0 cancels even when nothing
        # runs (an error in the log): at least one second.
        self._config.timeout_graceful_shutdown = max(1, math.ceil(grace))
        self._server.should_exit = True
        await self._ticks
        await self._server.shutdown(sockets=[self._sock])
