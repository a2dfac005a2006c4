"""Fitting a prompt into the model's context window.

The budget is the window minus a reserve for the reply. What is never cut:
the assistant's instructions and the new message (a new message larger than
the whole budget is truncated with a marker, never rejected). Then, in this
order, as room allows: recalled memories (capped at a share of the budget),
the thread's rolling summary, and as many of the most recent messages,
verbatim and in order, as fit. Counting is in the token counter's base
tokens, scaled by the model's calibrated ratio; texts that may be long are
counted with ``count_async``, so fitting never holds the event loop for long.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from service.core.models import ContextEntry, MessageStatus, Recalled, Role, Summary
from service.core.ports import ChatTurn, TokenCounter
from service.core.prompt import memory_block, summary_block

__all__ = [
    "Fitted",
    "fit",
    "plan_budget",
    "replayable",
    "token_limit",
    "truncate_middle",
    "with_tokens",
]

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


def token_limit(budget: int, ratio: float) -> int:
    """The base tokens a prompt may use: ``budget`` tokens of a model whose
    tokens are ``ratio`` base tokens each."""
    return max(int(budget / max(ratio, 0.01)), 64)


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


def replayable(entry: ContextEntry) -> bool:
    """Whether a message belongs in prompts: not one still streaming, nor a
    reply that produced neither text nor tool calls."""
    if entry.status is MessageStatus.IN_PROGRESS:
        return False
    return not (entry.role is Role.ASSISTANT and not entry.content and not entry.tool_calls)


def _turn(entry: ContextEntry, content: str | None = None) -> ChatTurn:
    return ChatTurn(
        entry.role.value,
        entry.content if content is None else content,
        entry.tool_calls,
        entry.tool_call_id,
    )


def _paired(turns: list[ChatTurn]) -> list[ChatTurn]:
    """``turns`` with every tool call answered and every answer called: an
    assistant turn keeps its calls only if all their outputs follow it (a
    cancelled, expired or cut-off run's calls are dropped, and the turn too
    if it said nothing), and a tool output stays only after its call. Chat
    endpoints reject prompts that break either rule."""
    answered = {t.tool_call_id for t in turns if t.tool_call_id}
    out: list[ChatTurn] = []
    open_calls: set[str] = set()
    for turn in turns:
        if turn.tool_calls:
            ids = {c.tool_call_id for c in turn.tool_calls}
            if ids <= answered:
                open_calls |= ids
                out.append(turn)
            elif turn.content:
                out.append(ChatTurn(turn.role, turn.content))
        elif turn.tool_call_id:
            if turn.tool_call_id in open_calls:
                out.append(turn)
        else:
            out.append(turn)
    return out


async def _pick_memories(
    memories: Sequence[Recalled], counter: TokenCounter, limit: int, used: int
) -> tuple[str, int]:
    """The memory block for the most relevant memories (the longest run
    from the first) that fit both the memory share of the budget and what is
    left of it.

    A block of more memories never counts fewer tokens, so the run is found
    by doubling its length until a block does not fit, then halving the gap:
    O(log n) counts of blocks at most about twice the size of the answer
    (adding one memory at a time counted a block per memory, O(n^2) text)."""
    room = min(int(limit * MEMORY_SHARE), limit - used)

    async def fits(n: int) -> bool:
        return await counter.count_async(memory_block(memories[:n])) <= room

    if not memories or not await fits(1):
        return "", 0
    good, bad = 1, 2  # the first ``good`` fit; ``bad`` do not, or run past the end
    while bad <= len(memories) and await fits(bad):
        good, bad = bad, bad * 2
    bad = min(bad, len(memories) + 1)
    while bad - good > 1:
        middle = (good + bad) // 2
        if await fits(middle):
            good = middle
        else:
            bad = middle
    return memory_block(memories[:good]), good


async def _pick_summary(summary: Summary | None, counter: TokenCounter, room: int) -> str:
    """The summary block, cut to ``room`` tokens if need be ("" if none fits)."""
    if summary is None or not summary.text:
        return ""
    block = summary_block(summary.text)
    if await counter.count_async(block) > room:
        block = summary_block(truncate_middle(summary.text, max(room, 0) * 3))
    return block if await counter.count_async(block) <= room else ""


async def _fit_new(
    content: str, counter: TokenCounter, room: int, per_message: int
) -> tuple[str, int, bool]:
    """The new message's content, its cost, and whether it was cut to fit
    ``room`` (by the characters per token its own count gives)."""
    cost = await counter.count_async(content) + per_message
    if cost <= room:
        return content, cost, False
    chars_per_token = len(content) / max(cost, 1)
    keep = int(max(room - per_message - 32, 16) * chars_per_token)
    cut = truncate_middle(content, keep)
    return cut, await counter.count_async(cut) + per_message, True


async def _pick_history(
    candidates: Sequence[ContextEntry], counter: TokenCounter, per_message: int, room: int
) -> tuple[list[ContextEntry], int]:
    """The most recent of ``candidates`` that fit ``room``, in order, and
    what they cost."""
    kept: list[ContextEntry] = []
    used = 0
    for entry in reversed(candidates):
        # Entries carry their count; awaiting one per entry would double
        # the cost of fitting a long history.
        cost = (entry.tokens or await _cost(entry, counter)) + per_message
        if used + cost > room:
            break
        kept.append(entry)
        used += cost
    kept.reverse()
    return kept, used


async def fit(
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
    limit = token_limit(budget, ratio)
    per_message = counter.message_overhead()
    used = counter.prompt_overhead() + per_message  # the system message

    base_system = await counter.count_async(instructions)
    room_for_new = limit - used - base_system
    new_content, new_cost, truncated = await _fit_new(
        new.content, counter, room_for_new, per_message
    )
    used += base_system + new_cost

    memory_text, memories_used = await _pick_memories(memories, counter, limit, used)
    used += await counter.count_async(memory_text)
    summary_text = await _pick_summary(summary, counter, limit - used)
    used += await counter.count_async(summary_text)

    # The rest of the current turn (tool calls and outputs of this run) is
    # kept whole, like the new message itself.
    pinned = [e for e in history if e.sequence > new.sequence and replayable(e)]
    used += sum([(e.tokens or await _cost(e, counter)) + per_message for e in pinned])

    through = summary.through_sequence if summary_text and summary else -1
    candidates = [e for e in history if through < e.sequence < new.sequence and replayable(e)]
    kept, history_cost = await _pick_history(candidates, counter, per_message, limit - used)
    used += history_cost

    system = "\n\n".join(p for p in (instructions, memory_text, summary_text) if p)
    turns = [ChatTurn("system", system)] if system else []
    turns.extend(_turn(e) for e in kept)
    turns.append(_turn(new, new_content))
    turns.extend(_turn(e) for e in pinned)
    turns = _paired(turns)
    return Fitted(
        turns=turns,
        base_tokens=used,
        limit=limit,
        history_used=len(kept),
        dropped=len(candidates) - len(kept),
        truncated=truncated,
        memories_used=memories_used,
        summary_used=bool(summary_text),
    )


async def _cost(entry: ContextEntry, counter: TokenCounter) -> int:
    """The entry's base tokens (those it carries, else counted)."""
    return (await with_tokens(entry, counter)).tokens


async def with_tokens(entry: ContextEntry, counter: TokenCounter) -> ContextEntry:
    """``entry`` with its base token count (content and tool calls) filled in."""
    if entry.tokens:
        return entry
    calls = 0
    for call in entry.tool_calls:
        calls += counter.count(call.name) + await counter.count_async(call.arguments) + 4
    return replace(entry, tokens=await counter.count_async(entry.content) + calls)
