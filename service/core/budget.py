"""Fitting a prompt into the model's context window.

The budget is the window minus a reserve for the reply. What is never cut:
the assistant's instructions and the new message (a new message larger than
the whole budget is truncated with a marker, never rejected). Then, in this
order, as room allows: recalled memories (capped at a share of the budget),
the thread's rolling summary, and as many of the most recent messages,
verbatim and in order, as fit. Counting is in the token counter's base
tokens, scaled by the model's calibrated ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from service.core.models import ContextEntry, MessageStatus, Recalled, Role, Summary
from service.core.ports import ChatTurn, TokenCounter
from service.core.prompt import memory_block, summary_block

__all__ = ["Fitted", "fit", "plan_budget", "truncate_middle", "with_tokens"]

MEMORY_SHARE = 0.15
MIN_RESERVE = 256
MAX_RESERVE = 4096


@dataclass(frozen=True, slots=True)
class Fitted:
    """A prompt that fits, and what fitting it cost."""

    turns: list[ChatTurn]
    base_tokens: int
    limit: int
    history_used: int
    dropped: int
    truncated: bool
    memories_used: int
    summary_used: bool


def plan_budget(window: int) -> int:
    """Tokens a prompt may use in ``window``: the rest is kept for the reply
    (an eighth of the window, between 256 and 4,096 tokens)."""
    reserve = min(max(window // 8, MIN_RESERVE), MAX_RESERVE)
    return max(window - reserve, MIN_RESERVE)


def truncate_middle(text: str, keep_chars: int) -> str:
    """``text`` cut to about ``keep_chars`` characters, keeping its start and
    end around a marker that says how much was left out."""
    if len(text) <= keep_chars:
        return text
    keep_chars = max(keep_chars, 64)
    head = keep_chars * 2 // 3
    tail = keep_chars - head
    cut = len(text) - head - tail
    marker = f"\n[... {cut:,} characters left out by Loom to fit the context window ...]\n"
    return text[:head] + marker + text[-tail:]


def _replayable(entry: ContextEntry) -> bool:
    if entry.status is MessageStatus.IN_PROGRESS:
        return False
    return not (entry.role is Role.ASSISTANT and not entry.content)


def fit(
    *,
    instructions: str,
    memories: Sequence[Recalled],
    summary: Summary | None,
    history: Sequence[ContextEntry],
    new: ContextEntry,
    budget: int,
    ratio: float,
    counter: TokenCounter,
) -> Fitted:
    """The prompt for ``new``, within ``budget`` tokens of the model whose
    tokens are ``ratio`` base tokens each."""
    limit = max(int(budget / max(ratio, 0.01)), 64)
    per_message = counter.message_overhead()
    used = counter.prompt_overhead() + per_message  # the system message

    base_system = counter.count(instructions)
    new_content = new.content
    new_cost = counter.count(new_content) + per_message
    truncated = False
    room_for_new = limit - used - base_system
    if new_cost > room_for_new:
        # Cut the message to what is left; characters per token from its count.
        chars_per_token = len(new_content) / max(new_cost, 1)
        keep = int(max(room_for_new - per_message - 32, 16) * chars_per_token)
        new_content = truncate_middle(new_content, keep)
        new_cost = counter.count(new_content) + per_message
        truncated = True
    used += base_system + new_cost

    chosen_memories: list[Recalled] = []
    memory_text = ""
    memory_cap = int(limit * MEMORY_SHARE)
    for memory in memories:
        candidate = memory_block([*chosen_memories, memory])
        cost = counter.count(candidate)
        if cost > memory_cap or used + cost > limit:
            break
        chosen_memories.append(memory)
        memory_text = candidate
    used += counter.count(memory_text)

    summary_text = ""
    if summary is not None and summary.text:
        block = summary_block(summary.text)
        cost = counter.count(block)
        if used + cost > limit:
            room = limit - used
            block = summary_block(truncate_middle(summary.text, max(room, 0) * 3))
            cost = counter.count(block)
        if used + cost <= limit:
            summary_text = block
            used += cost

    through = summary.through_sequence if summary_text and summary else -1
    candidates = [e for e in history if through < e.sequence < new.sequence and _replayable(e)]
    kept: list[ContextEntry] = []
    for entry in reversed(candidates):
        cost = (entry.tokens or counter.count(entry.content)) + per_message
        if used + cost > limit:
            break
        kept.append(entry)
        used += cost
    kept.reverse()

    system = "\n\n".join(p for p in (instructions, memory_text, summary_text) if p)
    turns = [ChatTurn("system", system)] if system else []
    turns.extend(ChatTurn(e.role.value, e.content) for e in kept)
    turns.append(ChatTurn(new.role.value, new_content))
    return Fitted(
        turns=turns,
        base_tokens=used,
        limit=limit,
        history_used=len(kept),
        dropped=len(candidates) - len(kept),
        truncated=truncated,
        memories_used=len(chosen_memories),
        summary_used=bool(summary_text),
    )


def with_tokens(entry: ContextEntry, counter: TokenCounter) -> ContextEntry:
    """``entry`` with its base token count filled in."""
    if entry.tokens:
        return entry
    return replace(entry, tokens=counter.count(entry.content))
