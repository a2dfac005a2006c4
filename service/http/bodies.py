"""Request bodies of the HTTP door, checked before anything runs: JSON
objects whose fields have the types OpenAI's API gives them. A field this
door does not know is refused (400, ``param`` naming it) rather than
silently dropped; the README's table lists every field and what Loom does
with it."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request

from service.core.errors import InvalidArgument

__all__ = [
    "ConversationCreate",
    "ConversationUpdate",
    "ItemsCreate",
    "ResponseCreate",
    "parse",
    "read",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ConversationCreate(_Body):
    """``POST /v1/conversations``."""

    items: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None


class ConversationUpdate(_Body):
    """``POST /v1/conversations/{id}`` (null metadata clears it)."""

    metadata: dict[str, str] | None


class ItemsCreate(_Body):
    """``POST /v1/conversations/{id}/items``."""

    items: list[dict[str, Any]]


class ResponseCreate(_Body):
    """``POST /v1/responses``: the fields Loom maps, then those it accepts
    and ignores, then those it refuses when set (``responses.REFUSED``)."""

    model: str | None = None
    input: Any = None  # a string or a list of items (``inputs.py``)
    instructions: str | None = None
    conversation: Any = None  # an id, or {"id": ...}
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: dict[str, Any] | None = None  # its format (``generation.py``); verbosity is ignored
    store: bool | None = None
    metadata: dict[str, str] | None = None
    stream: bool | None = None
    # Hints with no effect on what Loom does.
    parallel_tool_calls: bool | None = None
    truncation: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    include: list[str] | None = None
    stream_options: dict[str, Any] | None = None
    # Refused when set: Loom cannot do what they ask.
    reasoning: dict[str, Any] | None = None
    background: bool | None = None
    max_tool_calls: int | None = None
    top_logprobs: int | None = None
    prompt: dict[str, Any] | None = None
    context_management: Any = None
    moderation: Any = None


B = TypeVar("B", bound=_Body)


def _path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as a request path: ``input[0].content``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


async def read(request: Request, kind: type[B], limit: int) -> B:
    """The request's body as ``kind``, read up to ``limit`` bytes (the gRPC
    door's receive limit): a larger body is refused before it is all read.

    Raises:
        InvalidArgument: too large, or not what ``kind`` takes (``parse``).
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidArgument(
                f"the request body is larger than {limit:,} bytes, the most Loom reads "
                "(LOOM_MAX_MESSAGE_CHARS sets it)"
            )
        chunks.append(chunk)
    return parse(kind, b"".join(chunks))


def parse(kind: type[B], raw: bytes) -> B:
    """The request body as ``kind``.

    Raises:
        InvalidArgument: not a JSON object, an unknown field, a required one
            missing, or a field of the wrong type.
    """
    try:
        data = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise InvalidArgument("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidArgument("the request body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = _path(tuple(first["loc"]))
        if first["type"] == "extra_forbidden":
            message = (
                f"{param} is not a field Loom takes here (the README's section "
                "'Using Loom from an OpenAI SDK' lists the fields it supports)"
            )
        elif first["type"] == "missing":
            message = f"{param} is required"
        else:
            message = f"{param}: {first['msg']}"
        raise InvalidArgument(message, field=param) from None
