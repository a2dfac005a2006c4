"""The cached tail of a thread that prompts are built from."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from service.core.models import ContextEntry

__all__ = ["merge"]


def merge(
    context: Sequence[ContextEntry], new: Iterable[ContextEntry], max_chars: int
) -> list[ContextEntry]:
    """``context`` with ``new`` entries added (or replacing entries of the same
    sequence), in order, trimmed from the oldest end to ``max_chars`` of
    content. The newest entry is always kept."""
    by_sequence = {e.sequence: e for e in context}
    for entry in new:
        by_sequence[entry.sequence] = entry
    entries = [by_sequence[s] for s in sorted(by_sequence)]
    total = sum(len(e.content) for e in entries)
    start = 0
    while total > max_chars and start < len(entries) - 1:
        total -= len(entries[start].content)
        start += 1
    return entries[start:]
