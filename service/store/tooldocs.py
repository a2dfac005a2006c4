"""Tool definitions as stored documents."""

from __future__ import annotations

import json
from typing import Any

from service.core.models import ToolSpec

__all__ = ["tool_doc", "tool_from_doc"]


def tool_doc(tool: ToolSpec) -> dict[str, Any]:
    """A tool as a document. The parameters' JSON Schema is kept as JSON text:
    schemas hold keys MongoDB will not store as field names ("$ref", "$defs")."""
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": json.dumps(tool.parameters),
    }


def tool_from_doc(d: dict[str, Any]) -> ToolSpec:
    """The tool a document holds."""
    return ToolSpec(d["name"], d.get("description", ""), json.loads(d.get("parameters") or "{}"))
