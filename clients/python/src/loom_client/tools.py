"""Python functions as Loom tools: a function's signature and docstring become
an OpenAI-format function definition, and calls the model makes are run
against a table of functions by name."""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["call_function", "function_table", "function_tool", "output_text"]

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema(hint: Any) -> dict[str, Any]:
    """The JSON schema of one parameter's type hint (``{}``: anything)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _schema(args[0])
    if origin is typing.Literal:
        return {"enum": list(typing.get_args(hint))}
    if hint is list or origin in (list, tuple, Sequence):
        return {"type": "array", "items": _schema(args[0])} if args else {"type": "array"}
    if hint is dict or origin in (dict, Mapping):
        return {"type": "object"}
    return {}


def function_tool(
    function: Callable[..., Any], *, description: str | None = None
) -> dict[str, Any]:
    """The OpenAI-format definition of ``function``: its name, the first
    paragraph of its docstring, and a JSON schema of its parameters (those
    without a default are required)."""
    hints = typing.get_type_hints(function)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        properties[name] = _schema(hints.get(name, Any))
        if parameter.default is parameter.empty:
            required.append(name)
    doc = inspect.getdoc(function) or ""
    definition: dict[str, Any] = {"name": function.__name__}
    summary = description if description is not None else doc.split("\n\n")[0].strip()
    if summary:
        definition["description"] = " ".join(summary.split())
    definition["parameters"] = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": definition}


def function_table(
    functions: Sequence[Callable[..., Any]] | Mapping[str, Callable[..., Any]],
) -> dict[str, Callable[..., Any]]:
    """Functions by the name the model calls them: their ``__name__``, or the
    keys of a mapping."""
    if isinstance(functions, Mapping):
        return dict(functions)
    return {f.__name__: f for f in functions}


def call_function(
    table: Mapping[str, Callable[..., Any]], name: str, arguments: str
) -> tuple[Callable[..., Any], dict[str, Any]] | str:
    """The function and keyword arguments for one tool call, or, when the
    model named no known function or wrote arguments that are not a JSON
    object, the output to send back so that it can correct itself."""
    function = table.get(name)
    if function is None:
        known = ", ".join(sorted(table)) or "none"
        return json.dumps({"error": f"no function named {name!r}; the functions are: {known}"})
    try:
        kwargs = json.loads(arguments or "{}")
    except ValueError as exc:
        return json.dumps({"error": f"the arguments are not valid JSON: {exc}"})
    if not isinstance(kwargs, dict):
        return json.dumps({"error": "the arguments must be a JSON object"})
    return function, kwargs


def output_text(result: Any) -> str:
    """A tool's return value as the text sent to the model: strings as they
    are, anything else as JSON."""
    return result if isinstance(result, str) else json.dumps(result, default=str)
