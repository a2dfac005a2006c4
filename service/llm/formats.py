"""Which answer formats an endpoint's models accept: structured output
(``response_format`` ``json_schema``), JSON mode (``json_object``) or
neither, learned per model and remembered for the process.

OpenAI, vLLM, llama.cpp's server and recent Ollama take a JSON schema;
some servers and older models take only JSON mode, and a few refuse any
``response_format``. There is no standard way to ask which, so Loom asks
for the best format first and takes a refusal (an HTTP 4xx whose message
names ``response_format``, ``json_schema`` or ``json_object``) as the
answer: the model is then asked again with the next format, and later
calls for that model start there. A model that ignores the format it was
asked for is caught by the caller, which validates every answer anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.core.errors import FailedPrecondition

__all__ = ["AnswerFormat", "AnswerFormats", "refuses_format"]

_MENTIONS = ("response_format", "json_schema", "json_object", "structured output")


@dataclass(frozen=True, slots=True)
class AnswerFormat:
    """One way to ask for an answer: its name and the ``response_format``
    to send (None: send none)."""

    name: str
    response_format: dict[str, Any] | None


def refuses_format(error: FailedPrecondition) -> bool:
    """Whether a refused request was refused for its ``response_format``."""
    message = error.message.lower()
    return error.reason == "MODEL_REJECTED_REQUEST" and any(m in message for m in _MENTIONS)


class AnswerFormats:
    """The formats to try for each model, best first, forgetting those a
    model refused (thread-safe: replies and jobs share it)."""

    def __init__(self) -> None:
        self._refused: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def candidates(
        self, model: str, *, json: bool, schema: Mapping[str, Any] | None
    ) -> list[AnswerFormat]:
        """The formats to try in turn for an answer: the schema's (when
        given), JSON mode (when JSON is wanted), then none."""
        wanted = ["text"]
        if json or schema is not None:
            wanted.insert(0, "json_object")
        if schema is not None:
            wanted.insert(0, "json_schema")
        with self._lock:
            refused = set(self._refused.get(model, ()))
        return [_format(name, schema) for name in wanted if name not in refused]

    def refused(self, model: str, name: str) -> None:
        """Remember that ``model`` refused the format ``name``."""
        if name != "text":
            with self._lock:
                self._refused.setdefault(model, set()).add(name)


def _format(name: str, schema: Mapping[str, Any] | None) -> AnswerFormat:
    if name == "json_schema" and schema is not None:
        return AnswerFormat(
            name,
            {
                "type": "json_schema",
                "json_schema": {
                    "name": str(schema.get("title") or "answer"),
                    "strict": True,
                    "schema": dict(schema),
                },
            },
        )
    if name == "json_object":
        return AnswerFormat(name, {"type": "json_object"})
    return AnswerFormat(name, None)
