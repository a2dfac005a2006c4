"""Generation settings (temperature, output limit, response format ...):
their checks, a message's override of an assistant's defaults, and the check
of a reply against the JSON Schema it was asked to match."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import jsonschema

from service.core.errors import InvalidArgument
from service.core.limits import (
    MAX_OUTPUT_TOKENS,
    MAX_RESPONSE_SCHEMA_CHARS,
    MAX_SCHEMA_NAME,
    MAX_STOP_CHARS,
    MAX_STOP_SEQUENCES,
)

__all__ = [
    "REASONING_EFFORTS",
    "GenerationSettings",
    "ResponseFormat",
    "check_generation",
    "schema_error",
]

# The values of the Chat Completions `reasoning_effort` parameter Loom passes on.
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
_FORMATS = ("text", "json_object", "json_schema")
_NAME = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_SCHEMA_NAME}}}$")
# A reply's schema violation is reported up to this many characters.
_MAX_REPORT = 500


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The shape a reply must take: ``kind`` is "text", "json_object" or
    "json_schema"; the rest describes the schema of "json_schema"."""

    kind: str
    name: str = ""
    schema: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True, slots=True)
class GenerationSettings:
    """How the model writes a reply. None (or empty) leaves a field to the
    level below: a message's settings fall back to the assistant's, and the
    assistant's to the endpoint's defaults."""

    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    reasoning_effort: str = ""  # one of REASONING_EFFORTS, or "" for not set
    response_format: ResponseFormat | None = None

    def over(self, defaults: GenerationSettings) -> GenerationSettings:
        """These settings over ``defaults``, field by field: each field set
        here wins, each unset one keeps the default's value."""
        changes = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) not in (None, (), "")
        }
        return replace(defaults, **changes)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema the reply must match, if one was asked for."""
        fmt = self.response_format
        return fmt.schema if fmt is not None and fmt.kind == "json_schema" else None


def check_generation(settings: GenerationSettings, prefix: str) -> GenerationSettings:
    """Return ``settings`` if every field is in range; ``prefix`` names them
    in errors (``generation.``, ``assistant.generation.``).

    Raises:
        InvalidArgument: a number out of range (or NaN), too many or bad stop
            sequences, an unknown reasoning effort, or a bad response format.
    """
    _check_range(settings.temperature, 0.0, 2.0, prefix + "temperature")
    _check_range(settings.top_p, 0.0, 1.0, prefix + "top_p")
    tokens = settings.max_output_tokens
    if tokens is not None and not 1 <= tokens <= MAX_OUTPUT_TOKENS:
        raise InvalidArgument(
            f"{prefix}max_output_tokens is {tokens}; it must be 1 to {MAX_OUTPUT_TOKENS:,} "
            "(leave it unset for the model's own limit)",
            field=prefix + "max_output_tokens",
        )
    _check_stop(settings.stop, prefix + "stop")
    if settings.reasoning_effort not in ("", *REASONING_EFFORTS):
        raise InvalidArgument(
            f"{prefix}reasoning_effort {settings.reasoning_effort[:40]!r} is not one of "
            f"{', '.join(REASONING_EFFORTS)}",
            field=prefix + "reasoning_effort",
        )
    if settings.response_format is not None:
        _check_format(settings.response_format, prefix + "response_format")
    return settings


def _check_range(value: float | None, low: float, high: float, name: str) -> None:
    if value is not None and not low <= value <= high:  # NaN fails both comparisons
        raise InvalidArgument(f"{name} is {value}; it must be {low:g} to {high:g}", field=name)


def _check_stop(stop: Sequence[str], name: str) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(
            f"{name} has {len(stop)} sequences; the limit is {MAX_STOP_SEQUENCES}", field=name
        )
    for i, sequence in enumerate(stop):
        if not sequence or len(sequence) > MAX_STOP_CHARS or "\x00" in sequence:
            raise InvalidArgument(
                f"{name}[{i}] must be 1 to {MAX_STOP_CHARS} characters, without NUL",
                field=f"{name}[{i}]",
            )


def _check_format(fmt: ResponseFormat, name: str) -> None:
    if fmt.kind not in _FORMATS:
        raise InvalidArgument(
            f"{name} must set one of text, json_object or json_schema", field=name
        )
    if fmt.kind != "json_schema":
        return
    where = name + ".json_schema"
    if not _NAME.match(fmt.name):
        raise InvalidArgument(
            f"{where}.name {fmt.name[:80]!r} must be 1 to {MAX_SCHEMA_NAME} letters, digits, "
            "'_' or '-'",
            field=where + ".name",
        )
    if not fmt.schema:
        raise InvalidArgument(
            f"{where}.schema is required: the JSON Schema the reply must match",
            field=where + ".schema",
        )
    if len(json.dumps(fmt.schema)) > MAX_RESPONSE_SCHEMA_CHARS:
        raise InvalidArgument(
            f"{where}.schema is larger than {MAX_RESPONSE_SCHEMA_CHARS:,} characters as JSON",
            field=where + ".schema",
        )
    try:
        jsonschema.validators.validator_for(fmt.schema).check_schema(fmt.schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidArgument(
            f"{where}.schema is not a valid JSON Schema at {path}: {exc.message[:300]}",
            field=where + ".schema",
        ) from None


def schema_error(content: str, schema: dict[str, Any]) -> str:
    """Why ``content`` does not match ``schema``: not JSON, or its first
    violation (the most relevant, by jsonschema's ranking) and where; ""
    when it matches."""
    try:
        value = json.loads(content)
    except ValueError as exc:
        return f"the reply is not JSON: {exc}"[:_MAX_REPORT]
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is None:
        return ""
    path = "/".join(str(p) for p in error.absolute_path)
    return f"the reply does not match the schema at /{path}: {error.message}"[:_MAX_REPORT]
