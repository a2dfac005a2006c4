"""What a caller gives for a memory it creates or updates (MemoryService)."""

from __future__ import annotations

__all__ = ["MemoryDraft"]


class MemoryDraft:
    """Caller-supplied fields of a memory."""

    def __init__(
        self, content: str = "", user_id: str = "", metadata: dict[str, str] | None = None
    ) -> None:
        self.content = content
        self.user_id = user_id
        self.metadata = dict(metadata or {})
