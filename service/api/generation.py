"""Generation settings between protobuf and the domain."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from generated.loom.v1 import generation_pb2
from service.core.errors import InvalidArgument
from service.core.generation import GenerationSettings, ResponseFormat

__all__ = ["generation_from_pb", "generation_to_pb"]

_EFFORT_TO_PB = {
    "": generation_pb2.REASONING_EFFORT_UNSPECIFIED,
    "none": generation_pb2.REASONING_EFFORT_NONE,
    "minimal": generation_pb2.REASONING_EFFORT_MINIMAL,
    "low": generation_pb2.REASONING_EFFORT_LOW,
    "medium": generation_pb2.REASONING_EFFORT_MEDIUM,
    "high": generation_pb2.REASONING_EFFORT_HIGH,
}
_EFFORT_FROM_PB = {v: k for k, v in _EFFORT_TO_PB.items()}


def generation_from_pb(pb: generation_pb2.GenerationSettings, prefix: str) -> GenerationSettings:
    """The settings a request carries (fields it leaves unset stay None);
    ``prefix`` names the message in errors.

    Raises:
        InvalidArgument: a reasoning effort this server does not know.
    """
    effort = _EFFORT_FROM_PB.get(pb.reasoning_effort)
    if effort is None:
        raise InvalidArgument(
            f"{prefix}reasoning_effort {pb.reasoning_effort} is not a known ReasoningEffort",
            field=prefix + "reasoning_effort",
        )
    return GenerationSettings(
        temperature=pb.temperature if pb.HasField("temperature") else None,
        top_p=pb.top_p if pb.HasField("top_p") else None,
        max_output_tokens=pb.max_output_tokens if pb.HasField("max_output_tokens") else None,
        stop=tuple(pb.stop),
        seed=pb.seed if pb.HasField("seed") else None,
        reasoning_effort=effort,
        response_format=_format_from_pb(pb.response_format)
        if pb.HasField("response_format")
        else None,
    )


def _format_from_pb(pb: generation_pb2.ResponseFormat) -> ResponseFormat:
    kind = pb.WhichOneof("format") or ""  # "" is refused by the domain's check
    if kind != "json_schema":
        return ResponseFormat(kind)
    schema = pb.json_schema
    return ResponseFormat(
        kind,
        name=schema.name,
        schema=_integral(json_format.MessageToDict(schema.schema)),
        strict=schema.strict,
    )


def _integral(value: Any) -> Any:
    """``value`` with whole floats as ints: a Struct holds every number as a
    double, and a schema's `"maxItems": 3` should reach the model as written."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def generation_to_pb(settings: GenerationSettings) -> generation_pb2.GenerationSettings | None:
    """Settings as the API shows them (None when none is set)."""
    if settings == GenerationSettings():
        return None
    return generation_pb2.GenerationSettings(
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_output_tokens=settings.max_output_tokens,
        stop=settings.stop,
        seed=settings.seed,
        reasoning_effort=_EFFORT_TO_PB[settings.reasoning_effort],
        response_format=_format_to_pb(settings.response_format),
    )


def _format_to_pb(fmt: ResponseFormat | None) -> generation_pb2.ResponseFormat | None:
    if fmt is None:
        return None
    if fmt.kind == "text":
        return generation_pb2.ResponseFormat(text=generation_pb2.TextFormat())
    if fmt.kind == "json_object":
        return generation_pb2.ResponseFormat(json_object=generation_pb2.JsonObjectFormat())
    schema = struct_pb2.Struct()
    schema.update(fmt.schema)
    return generation_pb2.ResponseFormat(
        json_schema=generation_pb2.JsonSchemaFormat(name=fmt.name, schema=schema, strict=fmt.strict)
    )
