"""What the HTTP door's endpoints are given: the core objects the gRPC
servicers use, built once by ``server.py``, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from service.core.conversation import Conversation
from service.core.errors import Translator
from service.core.forks import Forks
from service.core.keys import Caller
from service.core.ratelimit import Limiter
from service.core.threads import Threads

__all__ = ["Door", "Handler"]


@dataclass(frozen=True, slots=True)
class Door:
    """The use cases behind the endpoints, and the wiring's error
    translators (adapter exceptions that mean something to a caller)."""

    authenticate: Callable[[str | None], Awaitable[Caller]]
    limiter: Limiter
    threads: Threads
    conversation: Conversation
    forks: Forks
    translators: Sequence[Translator] = ()
    max_body: int = 8 * 1024 * 1024  # bytes of a request body read at most


Handler = Callable[[Request, Door, Caller], Awaitable[Response]]
"""An endpoint, called once its caller is authenticated and admitted."""
