"""Context windows of common models, as served through OpenAI-compatible
endpoints. Matched by the longest known prefix of the model name (after any
"provider/" part), so "gpt-4o-2024-08-06" and "openai/gpt-4o" both match
"gpt-4o". Figures are the providers' published input limits."""

from __future__ import annotations

__all__ = ["KNOWN_WINDOWS", "lookup_window"]

KNOWN_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic
    "claude-3": 200_000,
    "claude-3-5": 200_000,
    "claude-3-7": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-opus-4": 200_000,
    "claude-haiku-4": 200_000,
    # Google
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    "gemini-2.0": 1_048_576,
    "gemini-2.5": 1_048_576,
    "gemma-2": 8_192,
    "gemma-3": 131_072,
    # Meta Llama (Ollama tags and hosted names)
    "llama3": 8_192,
    "llama-3": 8_192,
    "llama3.1": 131_072,
    "llama-3.1": 131_072,
    "llama3.2": 131_072,
    "llama-3.2": 131_072,
    "llama3.3": 131_072,
    "llama-3.3": 131_072,
    "llama-4": 1_048_576,
    "meta-llama/llama-3.1": 131_072,
    # Qwen
    "qwen2": 32_768,
    "qwen2.5": 32_768,
    "qwen3": 40_960,
    # Mistral
    "mistral": 32_768,
    "mistral-large": 131_072,
    "mistral-small": 32_768,
    "mixtral": 32_768,
    "codestral": 262_144,
    # DeepSeek
    "deepseek-chat": 65_536,
    "deepseek-reasoner": 65_536,
}


def lookup_window(model: str) -> int | None:
    """The window of the longest known prefix of ``model``, or None."""
    name = model.strip().lower()
    candidates = [name, name.rsplit("/", 1)[-1]]
    best: tuple[int, int] | None = None
    for candidate in candidates:
        for prefix, window in KNOWN_WINDOWS.items():
            if candidate.startswith(prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), window)
    return best[1] if best else None
