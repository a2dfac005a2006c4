"""The HTTP door's ASGI application: its routes, and what every endpoint
goes through first: ``Authorization: Bearer <Loom API key>`` to a tenant,
a token from the key's call limit (the gRPC calls' limiter), and every error
in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.core.errors import Unauthenticated
from service.core.keys import Caller
from service.http import conversations, responses
from service.http.door import Door, Handler
from service.http.errors import HttpError, error_response, http_error

__all__ = ["TENANT", "build_app"]

# Where a request's tenant is left for the telemetry middleware's log line.
TENANT = "loom.tenant"


async def _caller(request: Request, door: Door) -> Caller:
    """The caller the bearer token names, admitted by its key's call limit.

    Raises:
        Unauthenticated: no bearer token, an unknown or revoked key.
        RateLimited: the key is over its call rate.
    """
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "missing API key: send your Loom API key as 'Authorization: Bearer <key>'",
            reason="API_KEY_MISSING",
        )
    caller = await door.authenticate(token.strip())
    request.scope[TENANT] = caller.tenant
    door.limiter.admit(caller.key_id, caller.limits)
    return caller


def _endpoint(door: Door, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, door, await _caller(request, door))
        except Exception as exc:  # noqa: BLE001 - every error becomes OpenAI's shape
            return error_response(http_error(exc, door.translators))

    return endpoint


async def _no_route(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = (
        f"{request.method} {request.url.path} is not part of Loom's OpenAI-shaped API (the "
        "README's section 'Using Loom from an OpenAI SDK' lists what is)"
    )
    code = "method_not_allowed" if status == 405 else "not_found"
    return error_response(HttpError(status, "invalid_request_error", message, code, None))


def build_app(door: Door) -> Starlette:
    """The application serving the Conversations and Responses endpoints."""

    def route(path: str, method: str, handler: Handler) -> Route:
        return Route(path, _endpoint(door, handler), methods=[method])

    c, r = conversations, responses
    return Starlette(
        routes=[
            route("/v1/conversations", "POST", c.create),
            route("/v1/conversations/{conversation_id}", "GET", c.get),
            route("/v1/conversations/{conversation_id}", "POST", c.update),
            route("/v1/conversations/{conversation_id}", "DELETE", c.delete),
            route("/v1/conversations/{conversation_id}/items", "GET", c.list_items),
            route("/v1/conversations/{conversation_id}/items", "POST", c.create_items),
            route("/v1/conversations/{conversation_id}/items/{item_id}", "GET", c.get_item),
            route("/v1/conversations/{conversation_id}/items/{item_id}", "DELETE", c.delete_item),
            route("/v1/responses", "POST", r.create),
            route("/v1/responses/{response_id}", "GET", r.get),
            route("/v1/responses/{response_id}/input_items", "GET", r.list_input_items),
        ],
        exception_handlers={404: _no_route, 405: _no_route},
    )
