"""The token counter: long texts counted in slices give the same count as in
one go and let the event loop run between slices; what it keeps is bounded."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from service.llm import tokens
from service.llm.tokens import SLICE_CHARS, TokenBudgets

WORDS = ["loom", "thread", "Lisbon", "naïve", "don't", "x86_64", "3.14159", "ÆSIR", "für"]
PUNCT = [".", ",", "!", "?", ";", ":", "—", "...", "'s", '"', "(", ")", "\n", "\n\n", "\t"]


def _prose(rng: random.Random, chars: int) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        piece = rng.choice(WORDS) if rng.random() < 0.8 else rng.choice(PUNCT)
        piece += " " * rng.choice((0, 1, 1, 1, 2))
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _texts() -> dict[str, str]:
    rng = random.Random(9)  # noqa: S311 - reproducible text, not secrets
    code = "def f(x):\n    return [i ** 2 for i in range(x) if i % 3]  # squares\n" * 1500
    cjk = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(30_000))
    # A fullwidth comma after every 17th character, an ideographic full stop
    # after every 53rd.
    cjk_prose = "".join(
        c + ("\uff0c" if i % 17 == 16 else "\u3002" if i % 53 == 52 else "")
        for i, c in enumerate(cjk)
    )
    return {
        "cjk with punctuation": cjk_prose,
        "prose": _prose(rng, 100_000),
        "code": code,
        "cjk without spaces": cjk,
        "cjk between words": " ".join([cjk[:9000], _prose(rng, 20_000), cjk[9000:]]),
        "spaces and digits": " ".join(str(rng.randint(0, 10**9)) for _ in range(15_000)),
        "one long word": "a" * 50_000,
    }


@pytest.mark.parametrize(("name", "text"), list(_texts().items()))
async def test_counting_in_slices_matches_counting_in_one_go(name: str, text: str) -> None:
    assert len(text) > SLICE_CHARS
    whole = len(TokenBudgets()._encoding.encode_ordinary(text))
    assert await TokenBudgets().count_async(text) == whole
    assert TokenBudgets().count(text) == whole


async def test_a_long_text_lets_the_event_loop_run_while_it_is_counted() -> None:
    budgets = TokenBudgets()
    text = _texts()["prose"]
    turns = 0
    done = False

    async def other_work() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    before = turns
    await budgets.count_async(text)
    during = turns - before
    done = True
    await other
    # One slice per SLICE_CHARS or so, and the loop ran between each two.
    assert during >= len(text) // (2 * SLICE_CHARS)
    # Counted once: the second time is a lookup, with no slices.
    before = turns
    assert await budgets.count_async(text) == budgets.count(text)
    assert turns == before


def test_what_the_counter_keeps_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    budgets = TokenBudgets()
    for i in range(tokens._KEPT_COUNTS + 50):
        budgets.count(f"text number {i} " + "filler " * 50)
    assert len(budgets._counts) == tokens._KEPT_COUNTS
    caplog.set_level(logging.WARNING, logger="service.llm.tokens")
    models = [f"caller-chosen-model-{i}" for i in range(tokens._KEPT_MODELS + 50)]
    for model in models:
        budgets.calibrate(model, 1000, 1300)
        budgets.context_window(model)
    assert len(budgets._ratios) == tokens._KEPT_MODELS
    assert len(budgets._warned) == tokens._KEPT_MODELS
    assert len(caplog.records) == len(models)
    # A recent model is remembered: no second warning, its ratio kept.
    budgets.context_window(models[-1])
    assert len(caplog.records) == len(models)
    assert budgets.ratio(models[-1]) == pytest.approx(1.3)


# Letters of several scripts, digits, combining marks, apostrophes, spaces,
# line breaks, punctuation and symbols: every kind of neighbour a cut meets.
ALPHABET = (
    "abcdelmrstvXYZ \u00e9\u00fc \u00df \u4e2d\u6587\u5b57 \u3072\u3089 \u30ab\u30bf \ud55c\uae00 "
    "\u03b1\u03b2\u03b3 \u0430\u0431\u0432 0123456789 \u00b2\u00bd \u0301\u0308 ' \u2019 "
    ' \t\n\r\n,.;:!?-_/\\()[]{}<>@#$%^&*+=~`|"\u2026 \u2014\u00ab\u00bb'
    "\uff0c\u3002\uff01\uff1f\u3001\U0001f600\U0001f680\u2713\u20ac\u00a3 \u00a0\u3000"
)


@pytest.mark.parametrize("seed", range(40))
def test_every_place_a_slice_may_end_keeps_the_count_exact(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(seed)  # noqa: S311 - reproducible text, not secrets
    text = "".join(rng.choice(ALPHABET) for _ in range(4000))
    monkeypatch.setattr(tokens, "SLICE_CHARS", 16)  # a cut at nearly every chance
    pieces = list(tokens._slices(text))
    assert "".join(pieces) == text
    assert len(pieces) > 50
    encoding = TokenBudgets()._encoding
    assert sum(len(encoding.encode_ordinary(p)) for p in pieces) == len(
        encoding.encode_ordinary(text)
    )
