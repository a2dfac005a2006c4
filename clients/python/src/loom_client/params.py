"""The keyword arguments of the client's calls, declared once for ``Loom`` and
``AsyncLoom`` alike (``**options: Unpack[SendOptions]``).

A field left out means "not given": the server's default on create, and no
change on update (an update changes exactly the fields it is given).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

from loom_client.types import ContextStrategy, MemoryMode, OnBusy

__all__ = [
    "AssistantFields",
    "Generation",
    "MemoryChanges",
    "NewMemory",
    "SendOptions",
    "ThreadFields",
    "ToolSpec",
]

ToolSpec = Mapping[str, Any] | Callable[..., Any]
"""A tool: an OpenAI-format definition (``{"type": "function", "function":
{...}}``), or a Python function, described from its signature and docstring
(see ``loom_client.tools.function_tool``)."""


class Generation(TypedDict, total=False):
    """Generation settings (``GenerationSettings`` in the contract): on an
    assistant its defaults, on a message an override of the fields given."""

    temperature: float
    """0 to 2."""
    top_p: float
    """0 to 1."""
    max_output_tokens: int
    """Most tokens the reply may have."""
    stop: Sequence[str]
    """Up to 4 sequences at which the model stops."""
    seed: int
    reasoning_effort: str
    """``"none"``, ``"minimal"``, ``"low"``, ``"medium"`` or ``"high"``."""
    response_format: str | Mapping[str, Any]
    """``"text"``, ``"json_object"``, or ``{"json_schema": {"name": ...,
    "schema": {...}, "strict": True}}``: JSON matching the schema (the reply's
    ``schema_error`` says when it does not)."""


class SendOptions(TypedDict, total=False):
    """Options of ``send_message``, ``stream_message`` and ``run_tools``."""

    thread_id: str
    """The thread to continue; without it a new thread is created."""
    assistant_id: str
    """The assistant of a new thread (default: the tenant's default assistant)."""
    user_id: str
    """The end user of a new thread (memory is scoped to them)."""
    memory: MemoryMode | str
    """``"auto"``, ``"readonly"`` or ``"off"`` for this message (default: the
    assistant's ``memory_mode``)."""
    model: str
    """Model for this reply only."""
    tools: Sequence[ToolSpec]
    """Tools for this message only, replacing the assistant's."""
    tool_choice: str
    """``"auto"``, ``"none"``, ``"required"`` or the name of one tool."""
    metadata: Mapping[str, str]
    """Labels stored on the user message."""
    generation: Generation
    """Generation settings for this reply, over the assistant's."""
    request_id: str
    """Idempotency key; the client makes one per call when it is not given."""
    on_busy: OnBusy | str
    """When another reply is streaming on the thread: ``"reject"`` (the
    default: ``ThreadBusy``), ``"enqueue"`` (wait for it, bounded by the
    call's timeout) or ``"interrupt"`` (stop it; its stream ends
    ``ReplyInterrupted``)."""


class AssistantFields(TypedDict, total=False):
    """Fields of ``assistants.create`` and ``assistants.update``."""

    name: str
    instructions: str
    model: str
    memory_mode: MemoryMode | str
    metadata: Mapping[str, str]
    context_window: int
    context_strategy: ContextStrategy | str
    tools: Sequence[ToolSpec]
    memory_from_tool_outputs: bool
    generation: Generation


class ThreadFields(TypedDict, total=False):
    """Fields of ``threads.create``."""

    assistant_id: str
    """Empty: the tenant's default assistant."""
    user_id: str
    metadata: Mapping[str, str]


class NewMemory(TypedDict, total=False):
    """Fields of ``memories.create`` besides its content."""

    user_id: str
    """The end user it belongs to; empty means assistant-wide."""
    metadata: Mapping[str, str]


class MemoryChanges(TypedDict, total=False):
    """Fields of ``memories.update``."""

    content: str
    metadata: Mapping[str, str]
