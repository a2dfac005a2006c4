"""What a request's input items, tools and tool choice mean to Loom: text
messages (a ``developer`` message is a system one), function calls and
their outputs, and function tools. Loom stores text: images, files and
other item types are refused with the item's path as ``param``. Items to
store without a reply become AddMessages' new messages (``new_messages``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.core.batches import NewMessage
from service.core.errors import InvalidArgument
from service.core.models import Role, ToolCall, ToolSpec

__all__ = [
    "Call",
    "CallOutput",
    "Input",
    "InputMessage",
    "input_items",
    "new_messages",
    "tool_choice_of",
    "tools_of",
]

_ROLES = {"user": Role.USER, "system": Role.SYSTEM, "developer": Role.SYSTEM}
_CHOICES = frozenset({"auto", "none", "required"})


@dataclass(frozen=True, slots=True)
class InputMessage:
    """A text message (user, system or assistant)."""

    role: Role
    text: str


@dataclass(frozen=True, slots=True)
class Call:
    """A function call the model made, given back as history."""

    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class CallOutput:
    """The output of a function call."""

    call_id: str
    output: str


Input = InputMessage | Call | CallOutput


def _string(item: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = item.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}.{key} must be a string", field=f"{where}.{key}")
    return value


def _text(content: Any, where: str, kinds: frozenset[str]) -> str:
    """A content string, or the text of a list of text parts, joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidArgument(
            f"{where} must be a string or a non-empty list of text parts", field=where
        )
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in kinds:
            raise InvalidArgument(
                f"{where}[{i}].type {str(kind)[:40]!r} is not supported: Loom stores text, so "
                f"content parts must be {' or '.join(sorted(kinds))}",
                field=f"{where}[{i}].type",
            )
        texts.append(_string(part, "text", f"{where}[{i}]"))
    return "".join(texts)


def _message(item: Mapping[str, Any], where: str) -> InputMessage:
    role = item.get("role")
    if role == "assistant":
        kinds = frozenset({"output_text", "input_text"})
        return InputMessage(Role.ASSISTANT, _text(item.get("content"), f"{where}.content", kinds))
    if role not in _ROLES:
        raise InvalidArgument(
            f"{where}.role must be 'user', 'system', 'developer' or 'assistant'",
            field=f"{where}.role",
        )
    text = _text(item.get("content"), f"{where}.content", frozenset({"input_text"}))
    return InputMessage(_ROLES[role], text)


def _item(item: Any, where: str) -> Input:
    if not isinstance(item, dict):
        raise InvalidArgument(f"{where} must be an object (an input item)", field=where)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _message(item, where)
    if kind == "function_call_output":
        output = item.get("output")
        text = _text(output, f"{where}.output", frozenset({"input_text"}))
        return CallOutput(_string(item, "call_id", where), text)
    if kind == "function_call":
        return Call(
            _string(item, "call_id", where),
            _string(item, "name", where),
            _string(item, "arguments", where),
        )
    raise InvalidArgument(
        f"{where}.type {str(kind)[:40]!r} is not supported: Loom takes message, function_call "
        "and function_call_output items",
        field=f"{where}.type",
    )


def input_items(value: Any, field: str) -> list[Input]:
    """A request's ``input`` (or ``items``): a string is one user message.

    Raises:
        InvalidArgument: missing, empty, or an item Loom cannot store.
    """
    if isinstance(value, str):
        return [InputMessage(Role.USER, value)]
    if not isinstance(value, list) or not value:
        raise InvalidArgument(
            f"{field} is required: a string, or a non-empty list of input items", field=field
        )
    return [_item(item, f"{field}[{i}]") for i, item in enumerate(value)]


def tools_of(tools: list[dict[str, Any]] | None) -> list[ToolSpec] | None:
    """Function tools (None: the assistant's own).

    Raises:
        InvalidArgument: a tool that is not a function, or malformed.
    """
    if tools is None:
        return None
    specs = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if tool.get("type") != "function":
            raise InvalidArgument(
                f"{where}.type {str(tool.get('type'))[:40]!r} is not supported: Loom runs no "
                "tools itself, so only function tools (your code runs them) are taken",
                field=f"{where}.type",
            )
        parameters = tool.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidArgument(
                f"{where}.parameters must be a JSON Schema object", field=f"{where}.parameters"
            )
        specs.append(
            ToolSpec(
                name=_string(tool, "name", where),
                description=_string(tool, "description", where, required=False),
                parameters=parameters,
            )
        )
    return specs


def tool_choice_of(value: Any) -> str:
    """Loom's ``tool_choice``: "", "auto", "none", "required" or a tool name.

    Raises:
        InvalidArgument: a choice other than those, or a function's.
    """
    if value is None:
        return ""
    if isinstance(value, str) and value in _CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return _string(value, "name", "tool_choice")
    raise InvalidArgument(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}",
        field="tool_choice",
    )


def new_messages(items: list[Input]) -> tuple[list[NewMessage], list[int]]:
    """``items`` as messages to store, and the index of the item each one
    starts at. Function calls join the assistant message before them (the
    turn in which the model made them, as a response's items show it), so
    that their outputs follow it as a model's prompt needs them to."""
    messages: list[NewMessage] = []
    starts: list[int] = []
    for i, item in enumerate(items):
        if isinstance(item, Call):
            call = ToolCall(item.call_id, item.name, item.arguments)
            last = messages[-1] if messages else None
            if last is not None and last.role is Role.ASSISTANT:
                last.tool_calls.append(call)
                continue
            message = NewMessage(Role.ASSISTANT, tool_calls=[call])
        elif isinstance(item, CallOutput):
            message = NewMessage(Role.TOOL, item.output, tool_call_id=item.call_id)
        else:
            message = NewMessage(item.role, item.text)
        messages.append(message)
        starts.append(i)
    return messages, starts
