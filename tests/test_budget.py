"""Choosing the recalled memories that fit a prompt: the same choice as
adding one memory at a time, for a logarithmic number of counts."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from service.core.budget import MEMORY_SHARE, _pick_memories
from service.core.models import Recalled
from service.core.prompt import memory_block
from service.llm.tokens import TokenBudgets

COUNTER = TokenBudgets()


def _one_at_a_time(
    memories: Sequence[Recalled], counter: TokenBudgets, limit: int, used: int
) -> tuple[str, int]:
    """The choice as Loom made it before: a block per memory added."""
    chosen: list[Recalled] = []
    text = ""
    cap = int(limit * MEMORY_SHARE)
    for memory in memories:
        candidate = memory_block([*chosen, memory])
        cost = counter.count(candidate)
        if cost > cap or used + cost > limit:
            break
        chosen.append(memory)
        text = candidate
    return text, len(chosen)


class _Tally:
    """The real counter, tallying what ``_pick_memories`` asks it to count."""

    def __init__(self) -> None:
        self.calls = 0
        self.chars = 0

    def count(self, text: str) -> int:
        return COUNTER.count(text)

    async def count_async(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return await COUNTER.count_async(text)


def _memories(rng: random.Random, n: int) -> list[Recalled]:
    words = ["peanuts", "Lisbon", "tea", "allergic", "prefers", "the", "morning", "  ", "\n"]
    return [
        Recalled(
            f"mem_{i:024x}",
            " ".join(rng.choice(words) for _ in range(rng.choice((1, 3, 10, 60, 400)))),
            1.0,
        )
        for i in range(n)
    ]


async def test_the_same_memories_are_chosen_as_one_at_a_time() -> None:
    rng = random.Random(3)  # noqa: S311 - reproducible cases, not secrets
    for _ in range(400):
        memories = _memories(rng, rng.randint(0, 14))
        limit = rng.choice((64, 300, 1000, 4000, 20_000))
        used = rng.randint(0, limit)
        expected = _one_at_a_time(memories, COUNTER, limit, used)
        assert await _pick_memories(memories, _Tally(), limit, used) == expected


@pytest.mark.parametrize("n", [1_000, 5_000])
async def test_many_memories_cost_a_logarithmic_number_of_counts(n: int) -> None:
    memories = [Recalled(f"mem_{i:024x}", f"remembered fact number {i}.", 1.0) for i in range(n)]
    limit = 100_000  # the memory share holds some thousands of these
    tally = _Tally()
    text, chosen = await _pick_memories(memories, tally, limit, 0)
    room = int(limit * MEMORY_SHARE)
    assert 0 < chosen <= n
    assert text == memory_block(memories[:chosen])
    assert COUNTER.count(text) <= room
    if chosen < n:
        assert COUNTER.count(memory_block(memories[: chosen + 1])) > room
    # Doubling, then halving: about 2 log2(n) counts, none of a block of
    # more than twice the memories chosen (one at a time: n counts, n^2 text).
    assert tally.calls <= 2 * math.ceil(math.log2(n)) + 2
    assert tally.chars <= tally.calls * len(memory_block(memories[: 2 * chosen]))
