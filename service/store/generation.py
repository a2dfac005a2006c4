"""Generation settings as stored documents (on assistants and on runs that
wait for tool outputs)."""

from __future__ import annotations

import json
from typing import Any

from service.core.generation import GenerationSettings, ResponseFormat

__all__ = ["generation_doc", "generation_from_doc"]

Doc = dict[str, Any]


def generation_doc(settings: GenerationSettings) -> Doc | None:
    """Settings as a document holding only the fields that are set; None
    when none is. A schema is kept as JSON text: schemas hold keys MongoDB
    will not store as field names ("$ref", "$defs")."""
    doc: Doc = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_output_tokens": settings.max_output_tokens,
        "stop": list(settings.stop) or None,
        "seed": settings.seed,
        "reasoning_effort": settings.reasoning_effort or None,
    }
    fmt = settings.response_format
    if fmt is not None:
        doc["response_format"] = {
            "kind": fmt.kind,
            "name": fmt.name,
            "schema": json.dumps(fmt.schema),
            "strict": fmt.strict,
        }
    doc = {k: v for k, v in doc.items() if v is not None}
    return doc or None


def generation_from_doc(d: Doc | None) -> GenerationSettings:
    """The settings a document holds (none set for a missing document)."""
    if not d:
        return GenerationSettings()
    fmt = d.get("response_format")
    return GenerationSettings(
        temperature=d.get("temperature"),
        top_p=d.get("top_p"),
        max_output_tokens=d.get("max_output_tokens"),
        stop=tuple(d.get("stop") or ()),
        seed=d.get("seed"),
        reasoning_effort=d.get("reasoning_effort", ""),
        response_format=ResponseFormat(
            fmt["kind"],
            fmt.get("name", ""),
            json.loads(fmt.get("schema") or "{}"),
            bool(fmt.get("strict", False)),
        )
        if fmt
        else None,
    )
