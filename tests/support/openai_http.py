"""OpenAI's Python SDK pointed at the in-process Loom's HTTP door, and the
scripted model's answers the HTTP tests share."""

from __future__ import annotations

import json
from typing import Any

from openai import AsyncOpenAI

from service.server import Loom
from tests.scripted_llm import Reply

__all__ = ["WEATHER_TOOL", "base_url", "converse", "openai_for"]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def base_url(loom: Loom) -> str:
    """The door's base URL, as an OpenAI client takes it."""
    return f"http://127.0.0.1:{loom.http_port}/v1"


def openai_for(loom: Loom, key: str, **options: Any) -> AsyncOpenAI:
    """The unchanged SDK with Loom's URL and key; no retries unless asked,
    so that a test sees each answer Loom gives."""
    options.setdefault("max_retries", 0)
    return AsyncOpenAI(base_url=base_url(loom), api_key=key, **options)


def converse(body: dict[str, Any]) -> Reply:
    """The scripted model: answers from the conversation it is sent (so a
    reply shows what state reached the prompt), asks for get_weather when
    offered it, and reports the weather from the tool's output."""
    messages = body["messages"]
    last = messages[-1]
    if last["role"] == "tool":
        return Reply(text=f"It is {json.loads(last['content'])['forecast']}.")
    content = str(last.get("content") or "")
    if body.get("tools") and "weather" in content:
        return Reply(
            tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
        )
    if "What did I" in content:
        earlier = [str(m.get("content")) for m in messages[:-1] if m["role"] == "user"]
        return Reply(text=f"You told me: {earlier[-1] if earlier else 'nothing'}")
    return Reply(text=f"You said: {content}")
