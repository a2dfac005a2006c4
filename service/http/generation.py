"""What a Responses request's ``temperature``, ``top_p``,
``max_output_tokens`` and ``text.format`` mean to the core's generation
settings (checked by the core's own rules), and ``text`` as a response
repeats it."""

from __future__ import annotations

from typing import Any

from service.core.errors import InvalidArgument
from service.core.generation import GenerationSettings, ResponseFormat, check_generation
from service.http.bodies import ResponseCreate

__all__ = ["generation_of", "text_object"]

_KINDS = ("text", "json_object", "json_schema")
# The core names a format's fields after Chat Completions' `response_format`;
# this door's requests name them `text.format` (longest first).
_RENAMES = (("response_format.json_schema.", "text.format."), ("response_format", "text.format"))


def _format_of(text: dict[str, Any] | None) -> ResponseFormat | None:
    fmt = (text or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in _KINDS:
        kind = fmt.get("type") if isinstance(fmt, dict) else fmt
        raise InvalidArgument(
            f"text.format.type {str(kind)[:40]!r} must be one of {', '.join(_KINDS)}",
            field="text.format.type",
        )
    if fmt["type"] != "json_schema":
        return ResponseFormat(fmt["type"])
    name, schema, strict = fmt.get("name", ""), fmt.get("schema"), fmt.get("strict")
    if not isinstance(name, str):
        raise InvalidArgument("text.format.name must be a string", field="text.format.name")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidArgument(
            "text.format.schema must be a JSON Schema object", field="text.format.schema"
        )
    return ResponseFormat("json_schema", name=name, schema=schema or {}, strict=bool(strict))


def _renamed(text: str) -> str:
    for core, door in _RENAMES:
        text = text.replace(core, door)
    return text


def generation_of(body: ResponseCreate) -> GenerationSettings | None:
    """The settings a request asks for (None when it sets none: the
    assistant's apply), checked as SendMessage checks them.

    Raises:
        InvalidArgument: a value out of range or a bad ``text.format``,
            named as this door's request names it.
    """
    settings = GenerationSettings(
        temperature=body.temperature,
        top_p=body.top_p,
        max_output_tokens=body.max_output_tokens,
        response_format=_format_of(body.text),
    )
    if settings == GenerationSettings():
        return None
    try:
        return check_generation(settings, "")
    except InvalidArgument as exc:
        raise InvalidArgument(_renamed(exc.message), field=_renamed(exc.field or "")) from None


def text_object(fmt: ResponseFormat | None) -> dict[str, Any]:
    """A response's ``text``: the format it was asked to take."""
    if fmt is None or fmt.kind != "json_schema":
        return {"format": {"type": fmt.kind if fmt is not None else "text"}}
    return {
        "format": {
            "type": "json_schema",
            "name": fmt.name,
            "schema": fmt.schema,
            "strict": fmt.strict,
            "description": None,
        }
    }
