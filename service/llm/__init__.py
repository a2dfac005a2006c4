"""Model clients implementing ``service.core.ports.ChatModel``."""

from service.llm.openai_chat import OpenAIChatModel

__all__ = ["OpenAIChatModel"]
