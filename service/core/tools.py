"""Checks on tool definitions and tool outputs."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import jsonschema

from service.core.errors import InvalidArgument
from service.core.limits import (
    MAX_TOOL_DESCRIPTION,
    MAX_TOOL_NAME,
    MAX_TOOL_OUTPUT_CHARS,
    MAX_TOOL_SCHEMA_CHARS,
    MAX_TOOLS,
)
from service.core.models import ToolCall, ToolSpec
from service.core.validation import check_text

__all__ = ["check_outputs", "check_tool_choice", "check_tools"]

_NAME = re.compile(rf"^[A-Za-z0-9_-]{{1,{MAX_TOOL_NAME}}}$")


def check_tools(tools: Sequence[ToolSpec], field: str) -> list[ToolSpec]:
    """Return ``tools`` if each is a valid function tool.

    Raises:
        InvalidArgument: a bad or duplicate name, a long description or one
            with NUL, or parameters that are not a valid JSON Schema for an
            object.
    """
    if len(tools) > MAX_TOOLS:
        raise InvalidArgument(
            f"{field} has {len(tools)} tools; the limit is {MAX_TOOLS}", field=field
        )
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"{field}[{i}]"
        if not _NAME.match(tool.name):
            raise InvalidArgument(
                f"{where}.function.name {tool.name[:80]!r} must be 1 to {MAX_TOOL_NAME} letters, "
                "digits, '_' or '-'",
                field=f"{where}.function.name",
            )
        if tool.name in seen:
            raise InvalidArgument(
                f"{where}.function.name {tool.name!r} is used twice; tool names must be unique",
                field=f"{where}.function.name",
            )
        seen.add(tool.name)
        check_text(tool.description, f"{where}.function.description", MAX_TOOL_DESCRIPTION)
        _check_schema(tool.parameters, f"{where}.function.parameters")
    return list(tools)


def _check_schema(schema: dict[str, object], field: str) -> None:
    if not schema:
        return
    if len(json.dumps(schema)) > MAX_TOOL_SCHEMA_CHARS:
        raise InvalidArgument(
            f"{field} is larger than {MAX_TOOL_SCHEMA_CHARS} characters", field=field
        )
    if schema.get("type", "object") != "object":
        raise InvalidArgument(
            f'{field} must describe an object ("type": "object"), not {schema.get("type")!r}',
            field=field,
        )
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        path = "/".join(str(p) for p in exc.path) or "(root)"
        raise InvalidArgument(
            f"{field} is not a valid JSON Schema at {path}: {exc.message[:300]}", field=field
        ) from None


def check_tool_choice(choice: str, tools: Sequence[ToolSpec]) -> str:
    """Return ``choice`` if it is "", "auto", "none", "required" or a tool's name.

    Raises:
        InvalidArgument: anything else, or "required" with no tools.
    """
    if choice in ("", "auto", "none"):
        return choice
    names = {t.name for t in tools}
    if choice == "required":
        if not names:
            raise InvalidArgument(
                "tool_choice 'required' needs tools on the assistant or the message",
                field="tool_choice",
            )
        return choice
    if choice not in names:
        raise InvalidArgument(
            f"tool_choice {choice[:80]!r} is not 'auto', 'none', 'required' or the name of one "
            "of the available tools",
            field="tool_choice",
        )
    return choice


def check_outputs(
    pending: Sequence[ToolCall] | Sequence[str], outputs: Sequence[tuple[str, str]]
) -> dict[str, str]:
    """Map each pending call id to its output.

    Raises:
        InvalidArgument: an output for an unknown call, two for one call, a
            call without an output, or an output that is too long or holds NUL.
    """
    wanted = [p.tool_call_id if isinstance(p, ToolCall) else p for p in pending]
    answers: dict[str, str] = {}
    for i, (call_id, output) in enumerate(outputs):
        if call_id not in wanted:
            raise InvalidArgument(
                f"tool_outputs[{i}].tool_call_id {call_id[:80]!r} is not a pending call of this "
                f"run; pending: {', '.join(wanted)}",
                field=f"tool_outputs[{i}].tool_call_id",
            )
        if call_id in answers:
            raise InvalidArgument(
                f"tool_outputs has two outputs for {call_id!r}; send exactly one per call",
                field=f"tool_outputs[{i}].tool_call_id",
            )
        check_text(output, f"tool_outputs[{i}].output", MAX_TOOL_OUTPUT_CHARS)
        answers[call_id] = output
    missing = [c for c in wanted if c not in answers]
    if missing:
        raise InvalidArgument(
            f"tool_outputs is missing outputs for {', '.join(missing)}; submit every call of "
            "the round at once",
            field="tool_outputs",
        )
    return answers
