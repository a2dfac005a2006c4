"""Token counting and the event loop.

Measures what counting a message costs (prose and CJK, 1,000 to 100,000
characters) and how long the event loop stalls while a 100,000-character
message is counted: in one go on the loop, in a worker thread
(``asyncio.to_thread``), and with ``count_async`` (slices, the loop running
between them). Texts: prose, CJK prose, and CJK with no punctuation at all,
which the tokenizer takes as one word and ``count_async`` cannot slice. A
task that does nothing but yield measures the stall: the longest gap between
two of its turns. The baseline is that gap with nothing counted, in the same
run.

    python -m bench.tokens [--samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable

from bench.common import machine
from service.llm.tokens import TokenBudgets

WORDS = ["the", "a", "loom", "thread", "reply", "memory", "model", "prompt", "window", "token"]


def _prose(chars: int, rng: random.Random) -> str:
    text = " ".join(rng.choice(WORDS) + rng.choice(("", "", "", ".", ",")) for _ in range(chars))
    return text[:chars]


def _cjk(chars: int, rng: random.Random, punctuated: bool = True) -> str:
    """Ideographs, with a fullwidth comma about every 17 characters when
    ``punctuated`` (as prose has), else one unbroken run."""
    every = 17 if punctuated else chars + 1
    return "".join(
        "\uff0c" if i % every == every - 1 else chr(rng.randint(0x4E00, 0x9FFF))
        for i in range(chars)
    )


def _count_ms(text: str, samples: int) -> float:
    encoding = TokenBudgets()._encoding
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        encoding.encode_ordinary(text)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def _stall_ms(work: Callable[[], Awaitable[object]]) -> float:
    """The longest gap between two turns of a yielding task while ``work``
    runs."""
    gaps: list[float] = []
    done = False

    async def ticker() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    gaps.clear()
    await work()
    done = True
    await task
    return max(gaps) * 1000


async def _stalls(text: str, samples: int) -> dict[str, list[float]]:
    counter = TokenBudgets()
    # A text of its own each time: a text counted before is only looked up.
    texts = iter(f"{i} {text}" for i in range(4 * samples))

    async def idle() -> None:
        await asyncio.sleep(0.02)

    async def inline() -> None:
        counter.count(next(texts))

    async def thread() -> None:
        await asyncio.to_thread(counter.count, next(texts))

    async def sliced() -> None:
        await counter.count_async(next(texts))

    ways = {"nothing counted (baseline)": idle, "count on the loop": inline}
    ways |= {"count in asyncio.to_thread": thread, "count_async (slices)": sliced}
    results: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(samples):
        for name, work in ways.items():
            results[name].append(await _stall_ms(work))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(1)  # noqa: S311 - reproducible text, not secrets
    print(f"machine: {machine()}")
    print("\ncounting one text in one go (median ms):")
    for chars in (1_000, 10_000, 100_000):
        prose, cjk = _prose(chars, rng), _cjk(chars, rng)
        print(
            f"  {chars:>7,} chars   prose {_count_ms(prose, args.samples):7.2f}"
            f"   cjk {_count_ms(cjk, args.samples):7.2f}"
        )
    cases = {"prose": _prose(100_000, rng), "cjk": _cjk(100_000, rng)}
    cases["cjk with no punctuation at all"] = _cjk(100_000, rng, punctuated=False)
    for name, text in cases.items():
        stalls = asyncio.run(_stalls(text, args.samples))
        print(f"\nlongest event-loop stall while counting 100,000 chars of {name} (ms):")
        for way, values in stalls.items():
            print(f"  {way:<28} median {statistics.median(values):7.2f}   max {max(values):7.2f}")


if __name__ == "__main__":
    main()
