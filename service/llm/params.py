"""Generation settings as OpenAI Chat Completions request parameters."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

from service.core.generation import GenerationSettings, ResponseFormat

__all__ = ["MaxTokensField", "generation_params"]

# The name the output limit goes under. `max_completion_tokens` is the Chat
# Completions field today: OpenAI deprecated `max_tokens` for it, and its
# reasoning models refuse `max_tokens` (it does not count reasoning tokens).
# Servers that predate the rename read only `max_tokens`, hence the setting
# LOOM_LLM_MAX_TOKENS_FIELD.
MaxTokensField: TypeAlias = Literal["max_completion_tokens", "max_tokens"]


def generation_params(
    settings: GenerationSettings, max_tokens_field: MaxTokensField = "max_completion_tokens"
) -> dict[str, Any]:
    """The request parameters for ``settings``: only the fields that are set,
    so the endpoint's defaults hold for the rest."""
    params: dict[str, Any] = {}
    if settings.temperature is not None:
        params["temperature"] = settings.temperature
    if settings.top_p is not None:
        params["top_p"] = settings.top_p
    if settings.max_output_tokens is not None:
        params[max_tokens_field] = settings.max_output_tokens
    if settings.stop:
        params["stop"] = list(settings.stop)
    if settings.seed is not None:
        params["seed"] = settings.seed
    if settings.reasoning_effort:
        params["reasoning_effort"] = settings.reasoning_effort
    if settings.response_format is not None:
        params["response_format"] = _response_format(settings.response_format)
    return params


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.kind != "json_schema":
        return {"type": fmt.kind}
    return {
        "type": "json_schema",
        "json_schema": {"name": fmt.name, "schema": fmt.schema, "strict": fmt.strict},
    }
